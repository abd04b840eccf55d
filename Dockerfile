# fuzzy-people worker/head image for KubeRay (RayJob, RayCronJob).
#
#   docker build --build-arg VARIANT=cpu -t <registry>/fuzzy-people:0.1.0-ray2.60.0-py311-cpu .
#   docker build --build-arg VARIANT=gpu -t <registry>/fuzzy-people:0.1.0-ray2.60.0-py311-gpu .
#
# Every pod of a Ray cluster must run the same Ray and Python versions: RAY_VERSION is the
# `ray` pin in pyproject.toml and the rayVersion in k8s/ (tests/k8s checks all three agree).
# The default models are prepared at build time, so pods never download a model.
ARG RAY_VERSION=2.60.0
# cpu: onnxruntime (CPU provider). gpu: the CUDA base image plus onnxruntime-gpu.
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

# Re-declared: ARGs set before FROM are not visible after it.
ARG RAY_VERSION
ARG VARIANT

ENV FUZZY_PEOPLE_CACHE=/opt/fuzzy-people/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# /opt belongs to root in the base image; the app and the model cache belong to the image's
# non-root user `ray` (uid 1000, gid 100), which every container in k8s/ runs as.
USER root
RUN mkdir -p /opt/fuzzy-people/app "${FUZZY_PEOPLE_CACHE}" \
 && chown -R 1000:100 /opt/fuzzy-people
USER ray

# The repository (as filtered by .dockerignore) at a fixed path: RayJob entrypoints run
# `python /opt/fuzzy-people/app/jobs/anonymize.py ...`.
WORKDIR /opt/fuzzy-people/app
COPY --chown=1000:100 . .

# `.[gpu]` adds onnxruntime-gpu next to the CPU-only onnxruntime that the package depends on.
# Both wheels install the same `onnxruntime` module, so whichever pip unpacked last wins; remove
# both and reinstall onnxruntime-gpu alone (same version) so the CUDA provider is the one
# imported. The check below fails the build if it is not.
RUN set -eux; \
    if [ "${VARIANT}" = "gpu" ]; then \
        pip install ".[gpu]"; \
        ort_version="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')"; \
        pip uninstall -y onnxruntime onnxruntime-gpu; \
        pip install --no-deps "onnxruntime-gpu==${ort_version}"; \
    else \
        pip install .; \
    fi; \
    python -c "import sys, onnxruntime as ort; p = ort.get_available_providers(); print('onnxruntime', ort.__version__, p); sys.exit(0 if '${VARIANT}' != 'gpu' or 'CUDAExecutionProvider' in p else 'onnxruntime has no CUDAExecutionProvider')"; \
    fuzzy-people run --help > /dev/null

# Prepare the default models (person segmentation, the person proposer, the audit's face
# detector) into $FUZZY_PEOPLE_CACHE inside the image; fail the build if nothing landed there.
RUN fuzzy-people models prepare \
 && test -n "$(ls -A "${FUZZY_PEOPLE_CACHE}")" \
 && python -c "from pipeline.anonymize import warm_up; print('kernel compiled in', round(warm_up(), 2), 's')"

LABEL org.opencontainers.image.title="fuzzy-people" \
      org.opencontainers.image.description="Hide every person in street imagery (Ray Data + onnxruntime)" \
      io.ray.version="${RAY_VERSION}"
