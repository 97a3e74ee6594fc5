"""The standalone host's GGRouter: what a Greengrass core does with a Lambda's MQTT publish.

* :mod:`.topics`    - AWS IoT's topic rules, MQTT filters, and who may publish what (the policy)
* :mod:`.settings`  - the broker, the queue bounds and the callers' allow-list (options, GG_MQTT_*)
* :mod:`.forwarder` - :class:`RouterRunner` (the host's admission hook and the served function) and
  :class:`MqttForwarder` (paho, QoS 1, the bounded wait for the broker)
"""
