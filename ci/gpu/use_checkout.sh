# Source from the repo root on the GPU machine: makes this checkout importable and registers its vLLM
# plugin entry point without pip (the machine has no network and no build backend is needed).
dist=/tmp/vllm_autoround_plugin/vllm_autoround-0.0.0.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: vllm-autoround\nVersion: 0.0.0\n' > "$dist/METADATA"
printf '[vllm.general_plugins]\nauto_round = vllm_autoround.serving.plugin:register\n' > "$dist/entry_points.txt"
export PYTHONPATH="$PWD:/tmp/vllm_autoround_plugin${PYTHONPATH:+:$PYTHONPATH}"
