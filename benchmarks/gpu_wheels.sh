#!/usr/bin/env bash
# Fetch (here, where pip reaches PyPI) the wheels that the lent GPU machine lacks into .whl/ (git-ignored via
# .git/info/exclude), for benchmarks/gpu_check.sh: `run` it with carry [".whl"]. The list is what unetseg
# and MONAI need beyond that machine's image (/work/.library/device/KINDS.md lists what it holds).
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64"
PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLAT -d .whl "$@"
}
get pydantic
# pydantic pins its compiled core exactly: fetch that version
core=$(unzip -p .whl/pydantic-[0-9]*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([^ ;]*\).*/\1/p')
get "pydantic-core==$core"
for pkg in annotated-types typing-inspection zarr numcodecs donfig crc32c ome-zarr nibabel dask distributed \
           tornado zict tblib partd locket monai; do
    get "$pkg"
done
du -sh .whl
