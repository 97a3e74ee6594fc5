/*
 * detector_op.c - a tiny "object detector" in the TVM graph-runtime model format, so that the
 * real libdlr.so (DLR 1.6, TVM graph runtime inside) can load and run a model in tests without
 * any compiler toolchain for Neo/TVM. build.py compiles this file with gcc into model.so and
 * writes the matching graph JSON (model.json) and parameters (model.params).
 *
 * ABI
 *   Every function the graph calls is a TVM "packed C function":
 *     int f(TVMValue* args, int* type_codes, int num_args,
 *           TVMValue* ret, int* ret_tcode, void* resource_handle)
 *   The graph runtime passes one DLTensor* per argument (type code 7, kTVMDLTensorHandle):
 *   the op's inputs first, then its outputs. 0 = success; -1 = failure, after setting a message
 *   through __TVMAPISetLastError (DLR then reports it as its last error).
 *   At load the runtime writes its own entry points into the exported pointer variables below
 *   (__TVMAPISetLastError, __TVMBackendAllocWorkspace, ...) and the module into __tvm_module_ctx;
 *   the op uses SetLastError and the workspace allocator, so a runtime that does not fill them in
 *   is noticed (the op fails with a message instead of silently working).
 *
 * Graph (see build.py): inputs
 *   data        float32 (or uint8) (1, H, W, 3) NHWC  [fixture_detect_nhwc]
 *               or (1, 3, H, W) NCHW                  [fixture_detect_nchw]
 *               channel order as the model sees it (R, G, B for the default RGB input), 0..255
 *   thresholds  float32 (3,), a parameter from model.params: [high, low, min_area]
 * outputs (GluonCV SSD/YOLOv3 convention, N rows, N from the output shapes, e.g. 16)
 *   ids     float32 (1, N, 1)  class id, -1 for padding rows
 *   scores  float32 (1, N, 1)  0..1, -1 for padding rows
 *   bboxes  float32 (1, N, 4)  [xmin, ymin, xmax, ymax] in input pixels, -1 for padding rows
 *
 * What it detects
 *   A pixel belongs to class c (0 = red, 1 = green, 2 = blue) when channel c >= high and both
 *   other channels <= low. Pixels of one class that touch (4-connectivity) form one object; an
 *   object of fewer than min_area pixels is ignored. Its box is the pixel extent with exclusive
 *   max edges, so the pixels img[y0:y1, x0:x1] give exactly [x0, y0, x1, y1]. Its score is the
 *   fill ratio pixels / box area: 1.0 for a solid axis-aligned rectangle, about 0.785 for a
 *   filled circle, 0.5 for a right triangle. Rows are sorted by score (descending), then by pixel
 *   count (descending), class, ymin, xmin; only the best N objects are kept.
 *
 * Fault triggers, read from the top-left pixel (y = 0, x = 0) in the channel order above, exact
 * float comparison (use PNG and a uniform top-left block, e.g. 16x16 pixels, so that decoding and
 * resizing keep the values):
 *   (1, 2, 3)  the op sets the error "fixture detector: injected failure (top-left pixel is
 *              1,2,3)" and returns -1: a DLR run error; the model stays usable for the next run.
 *   (7, 7, s)  the op sleeps s * 100 ms, then detects normally (a slow / hanging model).
 *   (9, 9, 9)  the op writes through a NULL pointer: a real SIGSEGV that kills the process.
 * Load-time faults, for the model-load timeout and crash-at-load tests, from the environment of
 * the process that loads the model:
 *   FIXTURE_LOAD_SLEEP_S=n   loading the library sleeps n seconds (a model that hangs loading);
 *   FIXTURE_LOAD_CRASH=1     loading the library writes through a NULL pointer (SIGSEGV).
 *
 * More input triggers:
 *   (5, 5, m)  the op allocates and touches m * 16 MiB, holds it for 1 s, frees it, then detects
 *              normally (a model whose memory use blows up on some input).
 */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FX_EXPORT __attribute__((visibility("default")))

/* dlpack / TVM runtime C types as of TVM 0.7-0.8 (what libdlr 1.6 embeds). */
typedef struct { int32_t device_type; int32_t device_id; } FxContext;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } FxDataType;
typedef struct {
  void* data;
  FxContext ctx;
  int32_t ndim;
  FxDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} FxTensor;
typedef union {
  int64_t v_int64;
  double v_float64;
  void* v_handle;
  const char* v_str;
  FxDataType v_type;
  FxContext v_ctx;
} FxValue;

enum { kFxInt = 0, kFxUInt = 1, kFxFloat = 2, kFxDLTensorHandle = 7, kFxCPU = 1 };

/* Filled in by the runtime when it loads this library (TVM library_module.cc,
 * InitContextFunctions and the __tvm_module_ctx assignment). */
FX_EXPORT void* __tvm_module_ctx = NULL;
FX_EXPORT int (*__TVMFuncCall)(void*, FxValue*, int*, int, FxValue*, int*) = NULL;
FX_EXPORT void (*__TVMAPISetLastError)(const char*) = NULL;
FX_EXPORT int (*__TVMBackendGetFuncFromEnv)(void*, const char*, void**) = NULL;
FX_EXPORT void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = NULL;
FX_EXPORT int (*__TVMBackendFreeWorkspace)(int, int, void*) = NULL;
FX_EXPORT int (*__TVMBackendParallelLaunch)(void*, void*, int) = NULL;
FX_EXPORT int (*__TVMBackendParallelBarrier)(int, void*) = NULL;

/* Volatile so that the compiler cannot prove the crash trigger writes through NULL and turn it
 * into a trap instruction (SIGILL): the tests want a genuine SIGSEGV. */
static int* volatile fx_null_pointer = NULL;

__attribute__((constructor)) static void fx_load_faults(void) {
  const char* sleep_s = getenv("FIXTURE_LOAD_SLEEP_S");
  if (sleep_s != NULL) {
    struct timespec ts = {(time_t)atoi(sleep_s), 0};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }
  const char* crash = getenv("FIXTURE_LOAD_CRASH");
  if (crash != NULL && crash[0] == '1') *fx_null_pointer = 1;
}

static int fx_fail(const char* message) {
  if (__TVMAPISetLastError != NULL) __TVMAPISetLastError(message);
  return -1;
}

typedef struct {
  const FxTensor* t;
  int nchw;
  int64_t h, w;
} FxImage;

static float fx_pixel(const FxImage* im, int64_t y, int64_t x, int c) {
  int64_t i = im->nchw ? ((int64_t)c * im->h + y) * im->w + x : (y * im->w + x) * 3 + c;
  const char* base = (const char*)im->t->data + im->t->byte_offset;
  if (im->t->dtype.code == kFxUInt) return (float)((const uint8_t*)base)[i];
  return ((const float*)base)[i];
}

typedef struct {
  int cls;
  float score;
  int64_t count, x0, y0, x1, y1;
} FxObject;

/* 1 when a should come before b in the output. */
static int fx_before(const FxObject* a, const FxObject* b) {
  if (a->score != b->score) return a->score > b->score;
  if (a->count != b->count) return a->count > b->count;
  if (a->cls != b->cls) return a->cls < b->cls;
  if (a->y0 != b->y0) return a->y0 < b->y0;
  return a->x0 < b->x0;
}

static int fx_is_f32(const FxTensor* t) {
  return t->dtype.code == kFxFloat && t->dtype.bits == 32 && t->dtype.lanes == 1;
}

static int fx_detect(FxValue* args, int* type_codes, int num_args, int nchw) {
  char msg[256];
  if (num_args != 5) {
    snprintf(msg, sizeof msg, "fixture detector: expected 5 arguments (data, thresholds, ids, "
             "scores, bboxes), got %d", num_args);
    return fx_fail(msg);
  }
  for (int i = 0; i < num_args; ++i) {
    if (type_codes[i] != kFxDLTensorHandle) {
      snprintf(msg, sizeof msg, "fixture detector: argument %d has type code %d, expected a "
               "DLTensor (7)", i, type_codes[i]);
      return fx_fail(msg);
    }
  }
  const FxTensor* data = (const FxTensor*)args[0].v_handle;
  const FxTensor* thr = (const FxTensor*)args[1].v_handle;
  FxTensor* out_ids = (FxTensor*)args[2].v_handle;
  FxTensor* out_scores = (FxTensor*)args[3].v_handle;
  FxTensor* out_boxes = (FxTensor*)args[4].v_handle;

  int input_ok = data->ndim == 4 && data->shape[0] == 1 && data->dtype.lanes == 1 &&
                 ((data->dtype.code == kFxFloat && data->dtype.bits == 32) ||
                  (data->dtype.code == kFxUInt && data->dtype.bits == 8)) &&
                 (nchw ? data->shape[1] == 3 : data->shape[3] == 3);
  if (!input_ok) return fx_fail("fixture detector: data must be float32 or uint8 of shape "
                                "(1, H, W, 3) (NHWC) or (1, 3, H, W) (NCHW)");
  if (!fx_is_f32(thr) || thr->ndim != 1 || thr->shape[0] < 3)
    return fx_fail("fixture detector: thresholds must be float32 of shape (3,)");
  if (!fx_is_f32(out_ids) || !fx_is_f32(out_scores) || !fx_is_f32(out_boxes) ||
      out_ids->ndim != 3 || out_scores->ndim != 3 || out_boxes->ndim != 3 ||
      out_ids->shape[2] != 1 || out_scores->shape[2] != 1 || out_boxes->shape[2] != 4 ||
      out_scores->shape[1] != out_ids->shape[1] || out_boxes->shape[1] != out_ids->shape[1])
    return fx_fail("fixture detector: outputs must be float32 (1,N,1), (1,N,1), (1,N,4)");

  FxImage im = {data, nchw, nchw ? data->shape[2] : data->shape[1],
                nchw ? data->shape[3] : data->shape[2]};
  const float* t = (const float*)((const char*)thr->data + thr->byte_offset);
  const float high = t[0], low = t[1];
  const int64_t min_area = t[2] < 1.0f ? 1 : (int64_t)t[2];

  /* Fault triggers (see the header comment). */
  float p0 = fx_pixel(&im, 0, 0, 0), p1 = fx_pixel(&im, 0, 0, 1), p2 = fx_pixel(&im, 0, 0, 2);
  if (p0 == 1.0f && p1 == 2.0f && p2 == 3.0f)
    return fx_fail("fixture detector: injected failure (top-left pixel is 1,2,3)");
  if (p0 == 9.0f && p1 == 9.0f && p2 == 9.0f) *fx_null_pointer = 9;
  if (p0 == 7.0f && p1 == 7.0f && p2 >= 0.0f) {
    int64_t ms = (int64_t)(p2 > 255.0f ? 255.0f : p2) * 100;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }

  if (p0 == 5.0f && p1 == 5.0f && p2 >= 0.0f) {
    size_t bytes = (size_t)(p2 > 255.0f ? 255.0f : p2) * (size_t)16 * 1024 * 1024;
    volatile char* hog = (volatile char*)malloc(bytes);
    if (hog == NULL) return fx_fail("fixture detector: could not allocate the requested memory");
    for (size_t i = 0; i < bytes; i += 4096) hog[i] = 1; /* touch every page: resident, not just mapped */
    struct timespec hold = {1, 0};
    while (nanosleep(&hold, &hold) != 0) {
    }
    free((void*)hog);
  }

  if (__TVMBackendAllocWorkspace == NULL || __TVMBackendFreeWorkspace == NULL)
    return fx_fail("fixture detector: the runtime did not provide TVMBackendAllocWorkspace");
  const int64_t n_pix = im.h * im.w;
  /* One byte per pixel (class + 1, 0 = none or visited) and a flood-fill stack of pixel
   * indices; both from the runtime's workspace allocator, as TVM-generated code does. */
  uint8_t* cls_map = (uint8_t*)__TVMBackendAllocWorkspace(kFxCPU, 0, (uint64_t)n_pix, kFxUInt, 8);
  int32_t* stack = (int32_t*)__TVMBackendAllocWorkspace(kFxCPU, 0, (uint64_t)n_pix * 4, kFxInt, 32);
  if (cls_map == NULL || stack == NULL) {
    if (cls_map) __TVMBackendFreeWorkspace(kFxCPU, 0, cls_map);
    if (stack) __TVMBackendFreeWorkspace(kFxCPU, 0, stack);
    return fx_fail("fixture detector: workspace allocation failed");
  }
  for (int64_t y = 0; y < im.h; ++y) {
    for (int64_t x = 0; x < im.w; ++x) {
      float v[3] = {fx_pixel(&im, y, x, 0), fx_pixel(&im, y, x, 1), fx_pixel(&im, y, x, 2)};
      uint8_t c = 0;
      for (int k = 0; k < 3; ++k) {
        if (v[k] >= high && v[(k + 1) % 3] <= low && v[(k + 2) % 3] <= low) c = (uint8_t)(k + 1);
      }
      cls_map[y * im.w + x] = c;
    }
  }

  const int64_t n_rows = out_ids->shape[1];
  FxObject best[64];
  int64_t keep = n_rows < 64 ? n_rows : 64, n_best = 0;
  for (int64_t start = 0; start < n_pix; ++start) {
    if (cls_map[start] == 0) continue;
    FxObject o = {cls_map[start] - 1, 0.0f, 0, im.w, im.h, -1, -1};
    uint8_t c = cls_map[start];
    int64_t top = 0;
    stack[top++] = (int32_t)start;
    cls_map[start] = 0;
    while (top > 0) {
      int64_t i = stack[--top], y = i / im.w, x = i % im.w;
      o.count++;
      if (x < o.x0) o.x0 = x;
      if (y < o.y0) o.y0 = y;
      if (x + 1 > o.x1) o.x1 = x + 1;
      if (y + 1 > o.y1) o.y1 = y + 1;
      int64_t nb[4] = {x > 0 ? i - 1 : -1, x + 1 < im.w ? i + 1 : -1,
                       y > 0 ? i - im.w : -1, y + 1 < im.h ? i + im.w : -1};
      for (int k = 0; k < 4; ++k) {
        if (nb[k] >= 0 && cls_map[nb[k]] == c) {
          cls_map[nb[k]] = 0;
          stack[top++] = (int32_t)nb[k];
        }
      }
    }
    if (o.count < min_area) continue;
    o.score = (float)((double)o.count / (double)((o.x1 - o.x0) * (o.y1 - o.y0)));
    /* Insertion into the sorted top-`keep` list. */
    int64_t pos = n_best;
    while (pos > 0 && fx_before(&o, &best[pos - 1])) --pos;
    if (pos >= keep) continue;
    int64_t last = n_best < keep ? n_best : keep - 1;
    for (int64_t j = last; j > pos; --j) best[j] = best[j - 1];
    best[pos] = o;
    if (n_best < keep) ++n_best;
  }
  __TVMBackendFreeWorkspace(kFxCPU, 0, stack);
  __TVMBackendFreeWorkspace(kFxCPU, 0, cls_map);

  float* ids = (float*)((char*)out_ids->data + out_ids->byte_offset);
  float* scores = (float*)((char*)out_scores->data + out_scores->byte_offset);
  float* boxes = (float*)((char*)out_boxes->data + out_boxes->byte_offset);
  for (int64_t r = 0; r < n_rows; ++r) {
    ids[r] = -1.0f;
    scores[r] = -1.0f;
    for (int k = 0; k < 4; ++k) boxes[r * 4 + k] = -1.0f;
  }
  for (int64_t r = 0; r < n_best; ++r) {
    ids[r] = (float)best[r].cls;
    scores[r] = best[r].score;
    boxes[r * 4 + 0] = (float)best[r].x0;
    boxes[r * 4 + 1] = (float)best[r].y0;
    boxes[r * 4 + 2] = (float)best[r].x1;
    boxes[r * 4 + 3] = (float)best[r].y1;
  }
  return 0;
}

FX_EXPORT int fixture_detect_nhwc(FxValue* args, int* type_codes, int num_args, FxValue* ret,
                                  int* ret_tcode, void* resource_handle) {
  (void)ret;
  (void)ret_tcode;
  (void)resource_handle;
  return fx_detect(args, type_codes, num_args, 0);
}

FX_EXPORT int fixture_detect_nchw(FxValue* args, int* type_codes, int num_args, FxValue* ret,
                                  int* ret_tcode, void* resource_handle) {
  (void)ret;
  (void)ret_tcode;
  (void)resource_handle;
  return fx_detect(args, type_codes, num_args, 1);
}
