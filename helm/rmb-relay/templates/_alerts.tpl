{{/*
The relay's alert rules as Prometheus rule groups. Used by the PrometheusRule template and, via
deploy/render.py, for deploy/prometheus/alerts.yaml. Every expression uses only metrics the relay
itself exports, selected with rmb-relay.alertSelector.

Federation failures get no alert yet: the relay exports no federation metrics until federation
exists.
*/}}
{{- define "rmb-relay.alertGroups" -}}
{{- $sel := include "rmb-relay.alertSelector" . }}
{{- $t := .Values.prometheusRule.thresholds }}
{{- $ignored := "draining|connection_limit|too_many_sessions" }}
- name: rmb-relay.availability
  rules:
    - alert: RmbRelayNoReadyPods
      expr: |
        absent(rmb_relay_ready{ {{- $sel -}} } == 1)
      for: 2m
      labels:
        severity: critical
      annotations:
        summary: No rmb-relay pod is ready.
        description: >-
          No scraped relay pod has reported rmb_relay_ready = 1 for 2 minutes: every pod is down,
          draining or unscraped, so twins cannot connect.
    - alert: RmbRelayRefusingAsUnavailable
      expr: |
        sum(rate(rmb_relay_envelopes_received_total{ {{- $sel }}, outcome="unavailable"}[5m])) > 0
        unless sum(rmb_relay_draining{ {{- $sel -}} }) > 0
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: The relay refuses envelopes with error 503 outside a drain.
        description: >-
          Envelopes are refused because the twin directory or the backplane cannot take them.
          Check Redis reachability and the relay logs.
    - alert: RmbRelayConnectionsNearLimit
      expr: |
        max by (instance) (rmb_relay_connections{ {{- $sel -}} }) > {{ $t.connectionsRatio }} * {{ int64 .Values.config.maxConnections }}
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: 'Relay {{ "{{ $labels.instance }}" }} is near its connection limit.'
        description: >-
          Open connections exceed {{ $t.connectionsRatio }} of config.maxConnections; further
          handshakes will get HTTP 503. Add pods or raise the limit.
- name: rmb-relay.delivery
  rules:
    - alert: RmbRelayInboxLagHigh
      expr: |
        max by (instance) (rmb_relay_inbox_lag_seconds{ {{- $sel -}} }) > {{ $t.inboxLagSeconds }}
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: 'Inbox of {{ "{{ $labels.instance }}" }} lags {{ "{{ $value | humanizeDuration }}" }}.'
        description: >-
          The delivery probe waits longer than {{ $t.inboxLagSeconds }}s in the pod's inbox
          stream: cross-pod delivery is behind (CPU saturation or slow Redis).
    - alert: RmbRelayMailboxGrowing
      expr: |
        (
          sum(rate(rmb_relay_mailbox_stored_total{ {{- $sel -}} }[30m]))
          - sum(rate(rmb_relay_mailbox_loaded_total{ {{- $sel -}} }[30m]))
        ) > {{ $t.mailboxGrowthPerSecond }}
        or
        sum(deriv(rmb_relay_mailbox_envelopes{ {{- $sel -}} }[30m])) > {{ $t.mailboxGrowthPerSecond }}
      for: 1h
      labels:
        severity: warning
      annotations:
        summary: Mail for offline twins keeps piling up.
        description: >-
          For an hour more than {{ $t.mailboxGrowthPerSecond }} envelopes per second have gone
          into mailboxes than come out: receivers stay offline. Mail expires at its TTL, but
          Redis memory grows meanwhile.
    - alert: RmbRelayMailboxFull
      expr: |
        sum(rate(rmb_relay_limit_hits_total{ {{- $sel }}, limit="mailbox"}[5m])) > 0
      for: 15m
      labels:
        severity: warning
      annotations:
        summary: Senders get error 111 (mailbox full).
        description: >-
          Some twins have config.mailboxMax envelopes queued and further mail to them is
          refused.
- name: rmb-relay.backplane
  rules:
    - alert: RmbRelayRedisErrors
      expr: |
        sum by (op) (rate(rmb_relay_redis_errors_total{ {{- $sel -}} }[5m])) > {{ $t.redisErrorsPerSecond }}
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: 'Redis command {{ "{{ $labels.op }}" }} keeps failing.'
        description: >-
          More than {{ $t.redisErrorsPerSecond }} failed Redis commands per second: the relay
          refuses work it cannot store durably. Check the Redis Cluster and the network.
- name: rmb-relay.security
  rules:
    - alert: RmbRelayAuthFailureSpike
      expr: |
        sum by (reason) (rate(rmb_relay_auth_failures_total{ {{- $sel }}, reason!~"{{ $ignored }}"}[5m])) > {{ $t.authFailuresPerSecond }}
        and
        sum by (reason) (rate(rmb_relay_auth_failures_total{ {{- $sel }}, reason!~"{{ $ignored }}"}[5m]))
          > 3 * sum by (reason) (rate(rmb_relay_auth_failures_total{ {{- $sel }}, reason!~"{{ $ignored }}"}[1h]))
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: 'Spike of refused handshakes ({{ "{{ $labels.reason }}" }}).'
        description: >-
          Refused handshakes for this reason run above {{ $t.authFailuresPerSecond }}/s and three
          times their hourly rate: a misconfigured client fleet, a bad twins file, clock drift,
          or someone probing the relay.
{{- end }}
