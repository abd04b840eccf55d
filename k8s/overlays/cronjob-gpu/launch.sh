#!/bin/sh
# Launcher for the CronJob fuzzy-people-nightly: creates one RayJob from $RAYJOB_TEMPLATE and
# waits until it has finished, so that the CronJob's `concurrencyPolicy: Forbid` covers the
# whole Ray run and not just the creation of the RayJob.
#
# Exit status: 0 when the Ray job SUCCEEDED; 1 when it failed, was stopped, or KubeRay marked
# the RayJob Failed/ValidationFailed (deadline, submission or cluster errors). On SIGTERM
# (the Job's activeDeadlineSeconds, or someone deleting the Job) it deletes the RayJob, so no
# Ray cluster keeps running with nobody waiting for it.
#
# Needs only: create, get and delete on rayjobs.ray.io in its namespace.
set -eu

template="${RAYJOB_TEMPLATE:-/etc/fuzzy-people/rayjob.yaml}"
namespace="${POD_NAMESPACE:?POD_NAMESPACE is not set}"
poll="${POLL_SECONDS:-30}"

name="$(kubectl create --namespace "$namespace" --filename "$template" --output name)"
echo "created $name in namespace $namespace"

stop() {
    echo "launcher stopped before $name finished: deleting it (and its Ray cluster)"
    kubectl delete --namespace "$namespace" "$name" --wait=false || true
    exit 143
}
trap stop TERM INT

while :; do
    # "<jobDeploymentStatus> <jobStatus>"; a failed API call is retried at the next poll.
    status="$(kubectl get --namespace "$namespace" "$name" \
        --output 'jsonpath={.status.jobDeploymentStatus} {.status.jobStatus}')" || status=""
    deployment="${status%% *}"
    job="${status#* }"
    case "$deployment" in
        Complete)
            if [ "$job" = "SUCCEEDED" ]; then
                echo "$name: Ray job SUCCEEDED"
                exit 0
            fi
            echo "$name: Ray job finished as ${job:-unknown}"
            exit 1
            ;;
        Failed | ValidationFailed)
            reason="$(kubectl get --namespace "$namespace" "$name" \
                --output 'jsonpath={.status.reason}: {.status.message}')" || reason=""
            echo "$name: RayJob $deployment (Ray job status ${job:-none}) $reason"
            exit 1
            ;;
    esac
    # Sleep in the background so that SIGTERM is handled at once.
    sleep "$poll" &
    wait $! || true
done
