# Flink JobManager / TaskManager / job submitter: the official Flink image plus Python 3.11, PyFlink and
# this project (the jobs), the Kafka SQL connector resolved by Maven from the same pom as the local runtime, and
# the jobs' Java functions (services/processing/udf) built by Maven.
# Build context: the repository root (see docker-compose.yml).
FROM maven:3.9-eclipse-temurin-17 AS connector
COPY infrastructure/local/maven/flink.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DoutputDirectory=/jars -DincludeScope=runtime
COPY services/processing/udf /build/udf
RUN mvn -q -B -f /build/udf/pom.xml package -DskipTests -Dudf.build.dir=/build/udf-target \
 && cp /build/udf-target/rtap-udf.jar /jars/

FROM ghcr.io/astral-sh/uv:0.8 AS uv

FROM flink:2.2.1-java17
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
RUN uv venv --python 3.11 /opt/venv

WORKDIR /opt/rtap
COPY requirements.lock pyproject.toml ./
RUN uv pip install -r requirements.lock
COPY shared ./shared
COPY services ./services
COPY infrastructure ./infrastructure
RUN uv pip install --no-deps .

COPY --from=connector /jars/ /opt/flink/lib/
RUN cp /opt/flink/opt/flink-python-*.jar /opt/flink/lib/ \
 && mkdir -p /opt/flink/state && chown -R flink:flink /opt/flink/state
WORKDIR /opt/flink
