#!/usr/bin/env bash
# One command to bring up xmlx with Docker Compose (docs/DEPLOY.md):
#   deploy/up.sh            build the images and start everything, detached
#   deploy/up.sh logs -f    any other arguments go to `docker compose` instead of `up -d`
# Needs deploy/.env (copy deploy/.env.example, replace every change-me).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -f "$here/.env" ]; then
  echo "deploy/.env is missing: cp deploy/.env.example deploy/.env and replace every change-me" >&2
  exit 1
fi
if grep -q 'change-me' "$here/.env"; then
  echo "deploy/.env still contains change-me placeholders; replace them first" >&2
  exit 1
fi
compose=(docker compose -f "$here/compose.yaml" --env-file "$here/.env")
if [ "$#" -eq 0 ]; then
  exec "${compose[@]}" up -d --build
fi
exec "${compose[@]}" "$@"
