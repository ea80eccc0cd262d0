# tests/bench/nightlies.sh - make sure the standard benchmark disk exists (sourced).
# ../shared/bench/make-nightlies.sh builds /tmp/anchors/img/night0..7.raw (2 GiB
# each, real ext4 content, ~2% changed per night); a few minutes the first time.
: "${ANCHORS:=/tmp/anchors}"
export ANCHORS
NIGHTS_DIR=$ANCHORS/img
ensure_nightlies() {
	[ -f "$NIGHTS_DIR/night7.raw" ] && return 0
	local script
	for script in "$PWD/../shared/bench/make-nightlies.sh" /work/shared/bench/make-nightlies.sh \
		"$PWD/tests/bench/make-nightlies.sh"; do
		[ -x "$script" ] || [ -f "$script" ] || continue
		echo "making the benchmark disks with $script (a few minutes)"
		bash "$script" >/dev/null 2>&1 && return 0
	done
	echo "SKIP: cannot make the benchmark disks (make-nightlies.sh not found or failed)"
	return 1
}
