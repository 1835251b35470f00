#!/usr/bin/env bash
# The demo: on a fresh Debian machine, installs what durafs needs, builds a small sample
# tree, initialises an encrypted catalog and a local directory pool, backs the tree up
# twice with a change between, lists the checkpoints and restores one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DEMO=${DEMO_DIR:-$(mktemp -d /tmp/durafs-demo.XXXXXX)}
export DURAFS_HOME="$DEMO/catalog"
durafs() { .venv/bin/durafs "$@"; }

echo "== sample tree in $DEMO/source"
mkdir -p "$DEMO/source/docs" "$DEMO/source/photos"
for i in $(seq 1 50); do echo "note $i: $(date)" > "$DEMO/source/docs/note-$i.txt"; done
head -c 3M /dev/urandom > "$DEMO/source/photos/big.raw"
ln -sf docs/note-1.txt "$DEMO/source/latest-note"

echo "== durafs init (age key encryption) and a pool in $DEMO/pool"
durafs init --encryption key
durafs pool add local --kind dir --path "$DEMO/pool" --volume-size 64M
durafs key export-identity "$DEMO/identity.txt"

echo "== first backup"
durafs backup "$DEMO/source" --pool local
echo "changed" >> "$DEMO/source/docs/note-7.txt"
rm "$DEMO/source/docs/note-9.txt"
sleep 1
echo "== second backup"
durafs backup "$DEMO/source" --pool local

echo "== checkpoints"
durafs checkpoints
first=$(durafs checkpoints --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')
echo "== ls default/$first$DEMO/source/docs (first 5)"
durafs ls "default/$first$DEMO/source/docs" | sed -n 1,5p
echo "== restore the first checkpoint's source tree to $DEMO/restored"
durafs restore "default/$first$DEMO/source" "$DEMO/restored"
echo "== how the first checkpoint differs from the source now (note-7 changed, note-9 removed):"
diff -r "$DEMO/restored/docs" "$DEMO/source/docs" || true
echo "== the pool holds plain files that age and tar read without durafs:"
ls -l "$DEMO/pool/volumes"
first_volume=$(ls "$DEMO"/pool/volumes/*-data-*.tar.age | head -1)
age -d -i "$DEMO/identity.txt" "$first_volume" | tar -tv | sed -n 1,4p
echo "demo done: everything is in $DEMO"
