# The daemon image for compose.yaml (people with a container engine; none runs on the
# project's own machines, where scripts/run starts a local broker instead).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["consumergen"]
CMD ["run"]
