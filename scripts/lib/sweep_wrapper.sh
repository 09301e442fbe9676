# shellcheck shell=bash
# The body of the per-protocol sweep wrappers scripts/{base2new,cross_dataset,domain_generalization,
# few_shot}.sh (sourced, not run):
#   sweep_protocol PROTOCOL METHOD [CONFIG] [sweep options...]
# runs scripts/sweep.sh --methods METHOD[:CONFIG] --protocol PROTOCOL [sweep options...]; with no
# METHOD it prints the calling script's header comment (its usage) and exits 2.

sweep_protocol() {
    local protocol=$1
    shift
    if [[ $# -lt 1 || $1 == -* ]]; then
        # the comment block after the #! line of the wrapper
        awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0" >&2
        exit 2
    fi
    local method=$1
    shift
    if [[ $# -gt 0 && $1 != -* ]]; then
        method="$method:$1"
        shift
    fi
    exec bash "$(dirname "${BASH_SOURCE[0]}")/../sweep.sh" --methods "$method" --protocol "$protocol" "$@"
}
