"""FID and CLIP score of every merged sample folder under the configured protocol.

With ``evaluate.tiny_clip`` (smoke) the CLIP model is the tiny offline one that `sidrepro tiny-clip` writes;
otherwise the protocol's own weights, fetched into a local hub cache by the `fetch_clip` rule (data.smk) and found
there through ``SIDREPRO_CLIP_CACHE``, so evaluate jobs need no network.
"""

if TINY_CLIP:

    rule tiny_clip:
        output:
            f"{CLIP_DIR}/sidrepro-tiny-clip-seed0.pt",
        params:
            folder=parent_folder,
        log:
            f"{ROOT}/logs/tiny_clip.log",
        conda:
            ENV
        shell:
            "sidrepro tiny-clip --out {params.folder} > {log} 2>&1"


rule evaluate:
    input:
        samples=f"{ROOT}/samples/{{model}}/manifest.jsonl",
        reference=f"{REFERENCE}/manifest.json",
        clip=[f"{CLIP_DIR}/sidrepro-tiny-clip-seed0.pt"] if TINY_CLIP else [CLIP_STAMP],
    output:
        f"{ROOT}/metrics/{{model}}.json",
    params:
        folder=samples_folder,
        reference=lambda wc, input: os.path.dirname(input.reference),
        protocol=PROTOCOL,
        clip=f"--clip-model sidrepro-tiny-clip --clip-weights {CLIP_DIR}/sidrepro-tiny-clip-seed0.pt"
        if TINY_CLIP
        else "",
        partial="--partial" if config["evaluate"].get("partial", False) else "",
        clip_cache=CLIP_CACHE,
    log:
        f"{ROOT}/logs/evaluate/{{model}}.log",
    threads: res("evaluate", "threads", 1)
    resources:
        gpu=res("evaluate", "gpu", 0),
        mem_mb=res("evaluate", "mem_mb", 16000),
        runtime=res("evaluate", "runtime", 60),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={threads} SIDREPRO_CLIP_CACHE={params.clip_cache}; "
        "sidrepro evaluate --samples {params.folder} --reference {params.reference} "
        "--protocol {params.protocol} --out {output} {params.partial} {params.clip} > {log} 2>&1"
