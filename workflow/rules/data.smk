"""Data: the prompt file (data-free), image-text shards (data-aided) and the COCO-2014 val reference.

Smoke: prompts listed in the config, a synthetic COCO-layout folder and synthetic parquet shards, all built here.
Paper: COCO comes from `sidrepro coco --download`; the midjourney-v6-llava prompt file and parquet shards are
external paths (no `sidrepro` command downloads them yet), passed as parameters so that a dry run needs no data.
"""

if "list" in DATA["prompts"]:

    rule prompts:
        output:
            PROMPTS,
        params:
            prompts=DATA["prompts"]["list"],
        log:
            f"{ROOT}/logs/prompts.log",
        conda:
            ENV
        shell:
            "printf '%s\\n' {params.prompts:q} > {output} 2> {log}"


if SYNTHETIC_COCO:

    rule synthetic_coco:
        output:
            coco_inputs(),
        params:
            folder=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
            n=DATA["coco"]["synthetic"],
        log:
            f"{ROOT}/logs/synthetic_coco.log",
        conda:
            ENV
        shell:
            "python workflow/scripts/synthetic_coco.py --out {params.folder} --n {params.n} > {log} 2>&1"


if SYNTHETIC_SHARDS:

    rule synthetic_shards:
        input:
            PROMPTS,
        output:
            shard_inputs(),
        params:
            folder=parent_folder,
            n=DATA["shards"]["synthetic"],
        log:
            f"{ROOT}/logs/synthetic_shards.log",
        conda:
            ENV
        shell:
            "python workflow/scripts/synthetic_shards.py --out {params.folder} --captions {input} --shards {params.n} "
            "> {log} 2>&1"


rule coco_reference:
    input:
        coco_inputs(),
    output:
        f"{REFERENCE}/manifest.json",
    params:
        # The real COCO folder is not an input (`sidrepro coco --download` fills it); the synthetic one is.
        coco=lambda wc, input: os.path.dirname(os.path.dirname(input[0])) if input else COCO_DIR,
        reference=parent_folder,
        protocol=PROTOCOL,
        download="--download" if DATA["coco"].get("download", False) and not SYNTHETIC_COCO else "",
    log:
        f"{ROOT}/logs/coco_reference.log",
    threads: res("coco_reference", "threads", 1)
    resources:
        runtime=res("coco_reference", "runtime", 240),
        mem_mb=res("coco_reference", "mem_mb", 16000),
        gpu=res("coco_reference", "gpu", 0),
    conda:
        ENV
    shell:
        # The FID statistics are computed here, once, so that parallel evaluate jobs only read them.
        "export OMP_NUM_THREADS={threads}; "
        "sidrepro coco --coco-dir {params.coco} --out {params.reference} {params.download} --workers {threads} "
        "--stats {params.protocol} > {log} 2>&1"
