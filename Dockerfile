# The RPM server image: `rpm serve` by default; `rpm simulate` for the simulator service.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY rpm rpm
COPY device_gateways device_gateways
COPY rules rules
COPY alerts alerts
COPY simulators simulators
RUN uv sync --frozen --no-dev --extra simulators
ENV PATH=/opt/venv/bin:$PATH
# The rule engine's compiled loops (numba): compiled here, cached where the server may write
# (it recompiles there if it runs on another CPU than the one that built the image).
ENV NUMBA_CACHE_DIR=/var/cache/rpm-numba
# /var/lib/rpm: the device CA and the broker's certificate (docker-compose.yml mounts named
# volumes there, which start with this owner).
RUN useradd --system --uid 10001 rpm \
 && python -c "from rules import kernels; kernels.warm_up()" \
 && mkdir -p /var/lib/rpm/device-ca /var/lib/rpm/broker-tls \
 && chown -R rpm /var/cache/rpm-numba /var/lib/rpm
USER rpm
EXPOSE 8000
CMD ["rpm", "serve"]
