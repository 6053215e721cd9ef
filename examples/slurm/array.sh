#!/usr/bin/env bash
# One lyrics-prep job as a Slurm job array: each array task is one worker; task ids are the worker indices.
#
#   sbatch --array=0-7 examples/slurm/array.sh s3://bucket/corpus/ s3://bucket/prepared/ 8
#   # after the array (e.g. sbatch --dependency=afterany:<array job id> --wrap "lyrics-prep finalize --output ..."):
#   lyrics-prep finalize --output s3://bucket/prepared/
#   # tasks that died: resubmit just those, with the same count
#   sbatch --array=$(lyrics-prep status --output s3://bucket/prepared/ --unfinished) \
#       examples/slurm/array.sh s3://bucket/corpus/ s3://bucket/prepared/ 8
#
# Arguments: INPUT OUTPUT WORKERS [more `lyrics-prep run` flags, e.g. --config job.toml --models models.toml].
# WORKERS must be the array's size at the first submission: the output records it and refuses another.
# Object-store credentials come from the environment Slurm passes on (AWS_*, AZURE_STORAGE_*, ...).
#SBATCH --job-name=lyrics-prep
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --requeue
set -euo pipefail
input=$1 output=$2 workers=$3
shift 3
exec "${LYRICS_PREP:-lyrics-prep}" run --input "$input" --output "$output" --workers "$workers" --progress log "$@"
