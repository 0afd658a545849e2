# Apache Kafka (KRaft) with the Prometheus JMX exporter java agent; its version matches
# infrastructure/local/maven/kafka.xml (a test checks).
ARG JMX_EXPORTER_VERSION=1.0.1

FROM maven:3.9-eclipse-temurin-17 AS agent
ARG JMX_EXPORTER_VERSION
RUN mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact=io.prometheus.jmx:jmx_prometheus_javaagent:${JMX_EXPORTER_VERSION} -DoutputDirectory=/agent \
 && mv /agent/jmx_prometheus_javaagent-*.jar /agent/jmx_prometheus_javaagent.jar

FROM apache/kafka:3.9.1
COPY --from=agent /agent/jmx_prometheus_javaagent.jar /opt/jmx-exporter/jmx_prometheus_javaagent.jar
COPY monitoring/kafka/jmx-exporter.yml /opt/jmx-exporter/jmx-exporter.yml
