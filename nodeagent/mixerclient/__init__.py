"""The node-local Mixer client: Envoy's ext_authz and access-log services, speaking Mixer.

Runs beside each sidecar (``meshfed proxy --mixer``) on a Unix socket the bootstrap's static
cluster names (``pilot.mixer_plugin.client_cluster``). :mod:`.attributes` turns what Envoy sends
into Istio 0.2 attribute bags; :mod:`.server` serves Envoy and calls the hub's Mixer, through
the Check cache (:mod:`.check_cache`) and the Report batcher (:mod:`.report_batcher`).
"""
