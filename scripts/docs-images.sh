#!/usr/bin/env bash
# Regenerate the README's images from real runs: the status page screenshot (the browser test,
# worker and embedded broker) and the backtest report of the shipped example events.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv dev
DRIFTSWITCH_DOCS_IMAGES=1 "$VENV/bin/python" -m pytest -q \
  "tests/integration/test_status_page.py::test_page_shows_every_flag_and_a_live_chart_and_requests_only_the_worker"
mkdir -p out
"$VENV/bin/driftswitch" backtest --config examples/ranker.yaml examples/ranker-drop.jsonl \
  --report out/backtest-report.html >/dev/null
cp out/backtest-report.png docs/img/backtest-report.png
echo "updated docs/img/status-page.png and docs/img/backtest-report.png"
