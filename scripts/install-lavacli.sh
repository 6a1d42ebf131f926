#!/usr/bin/env bash
# Installs the real lavacli (LAVA's XML-RPC client, from PyPI) into a virtual environment, for
# the system tests of dutlab's LAVA compatibility layer (crates/cli/tests/lava_compat.rs).
#
# - The version is pinned: the tests check what this lavacli sends and prints.
# - The environment is DUTLAB_LAVACLI_VENV (default: .venv/lavacli in the repository); the
#   tests find lavacli at $DUTLAB_LAVACLI, else at .venv/lavacli/bin/lavacli.
# - Idempotent: an environment that already has this version is left as it is.
# - Needs python3 with the venv module (Debian: python3-venv, installed here when missing).
set -euo pipefail
LAVACLI_VERSION=3.1.0
cd "$(dirname "$0")/.."
venv=${DUTLAB_LAVACLI_VENV:-$PWD/.venv/lavacli}

if [ -x "$venv/bin/lavacli" ] && "$venv/bin/lavacli" --version 2>/dev/null | grep -qx "lavacli $LAVACLI_VERSION"; then
  echo "install-lavacli: lavacli $LAVACLI_VERSION present in $venv"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "install-lavacli: installing python3-venv"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "lavacli==$LAVACLI_VERSION"
"$venv/bin/lavacli" --version
echo "install-lavacli: lavacli $LAVACLI_VERSION installed in $venv"
