#!/bin/bash
# alien_job_wrapper.sh: start an AliEn job agent with a clean environment (persistjob wq manager --job-wrapper).
#
# Work Queue runs pilots as `./wrapper.sh ./agent ARGS...`. This wrapper keeps only a minimal
# environment (PATH, HOME, USER, LANG, TMPDIR, the task's working directory) plus every ALIEN_*
# variable and the job's CONDOR_ID, X509_* and the Work Queue sandbox variables, then execs its
# arguments (so the agent keeps the PID Work Queue knows).
# When /cvmfs/alice.cern.ch is not mounted and Parrot (parrot_run, from CCTools) is available,
# the agent runs under Parrot, which provides CVMFS in user space.
set -u

keep=()
for var in $(compgen -e); do
    case "$var" in
        ALIEN_*|CONDOR_ID|X509_*|_CONDOR_*|WORK_QUEUE_SANDBOX|TMPDIR) keep+=("$var=${!var}") ;;
    esac
done

cvmfs=${ALIEN_CVMFS_REPO:-/cvmfs/alice.cern.ch}
launcher=()
if [ ! -d "$cvmfs" ] || [ -z "$(ls -A "$cvmfs" 2>/dev/null)" ]; then
    if command -v parrot_run >/dev/null 2>&1; then
        launcher=(parrot_run --)
        keep+=("PARROT_CVMFS_REPO=${PARROT_CVMFS_REPO:-<default-repositories>}")
    else
        echo "alien_job_wrapper: $cvmfs is not available and parrot_run is not installed" >&2
    fi
fi

[ $# -gt 0 ] || { echo "usage: $0 AGENT [ARGS...]" >&2; exit 2; }

exec env -i \
    PATH=/usr/local/bin:/usr/bin:/bin \
    HOME="${HOME:-$PWD}" \
    USER="${USER:-$(id -un)}" \
    LANG="${LANG:-C.UTF-8}" \
    "${keep[@]}" \
    "${launcher[@]}" "$@"
