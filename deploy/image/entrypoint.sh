#!/bin/bash
# The image's entry point (tini starts it as PID 1's child):
#   executor  a Spark executor for a driver on Spark's Kubernetes scheduler (`lookalike spark-serve`
#             or `lookalike analyze --engine spark` with LOOKALIKE_SPARK_MASTER=k8s://...): Spark
#             starts executor pods from this image with the argument "executor" and SPARK_*
#             variables; their Python workers are this image's /opt/venv, as on the driver.
#   anything else: run as given (lookalike serve, lookalike extract, ...).
set -euo pipefail

if [[ "${1:-}" != executor ]]; then
  exec "$@"
fi

spark_home="$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
# The driver's JVM options for executors (module opens for Java 17 included), in order.
java_opts=()
while read -r name; do
  java_opts+=("${!name}")
done < <(env | grep -o '^SPARK_JAVA_OPT_[0-9]*' | sort -t_ -k4 -n)

exec java -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" "${java_opts[@]}" \
  -cp "${SPARK_CONF_DIR:-${spark_home}/conf}:${spark_home}/jars/*" \
  org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
  --driver-url "${SPARK_DRIVER_URL}" \
  --executor-id "${SPARK_EXECUTOR_ID}" \
  --cores "${SPARK_EXECUTOR_CORES}" \
  --app-id "${SPARK_APPLICATION_ID}" \
  --hostname "${SPARK_EXECUTOR_POD_IP}" \
  --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
  --podName "${SPARK_EXECUTOR_POD_NAME}"
