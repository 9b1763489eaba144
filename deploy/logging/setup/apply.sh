#!/bin/sh
# Applies the logs' Elasticsearch and Kibana objects (the meshgate-logging-setup Job, PostSync):
# the ILM policy, the index template of the data stream logs-meshgate-*, and the Kibana data
# view + saved searches. Idempotent (PUT, import with overwrite); retries while ES and Kibana start.
set -eu
es=https://meshgate-logs-es-http.logging.svc:9200
kibana=https://meshgate-logs-kb-http.logging.svc:5601
auth="$SETUP_USER:$SETUP_PASSWORD"
call() { # CA file, then curl arguments
  ca=$1
  shift
  curl --fail-with-body --silent --show-error --retry 30 --retry-delay 10 --retry-all-errors \
    --cacert "$ca" -u "$auth" "$@"
  echo
}
call /es-tls/ca.crt -X PUT "$es/_ilm/policy/meshgate-logs" \
  -H 'Content-Type: application/json' --data-binary @/setup/ilm-policy.json
call /es-tls/ca.crt -X PUT "$es/_index_template/logs-meshgate" \
  -H 'Content-Type: application/json' --data-binary @/setup/index-template.json
call /kibana-tls/ca.crt -X POST "$kibana/api/saved_objects/_import?overwrite=true" \
  -H 'kbn-xsrf: meshgate-logging-setup' --form file=@/setup/kibana-saved-objects.ndjson
