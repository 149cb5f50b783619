"""Data: the prompt file (data-free), image-text shards (data-aided), the COCO-2014 val reference and the CLIP
metric weights.

Smoke: prompts listed in the config, a synthetic COCO-layout folder and synthetic parquet shards, all built here,
and the tiny offline CLIP (evaluate.smk).
Paper: `sidrepro fetch-dataset` pins and fetches the midjourney-v6-llava shards (data.shards.dataset; a stamp file
stands for the large folder), `sidrepro prompts` makes the prompt file from their captions with the COCO-2014 val
captions of the reference left out (data.prompts.from_shards), `sidrepro fetch-coco` downloads COCO-2014 val
(data.coco.download) for `sidrepro coco` to prepare with no network, and `sidrepro fetch-clip` puts the protocol's
CLIP weights in a local hub cache so that evaluate jobs need no network. Every download is an input of
`snakemake prefetch` (prefetch.smk).
A user-supplied `prompts: {file: ...}` or `shards: {dir: ...}` is an external path, passed as a parameter only.
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


if DATASET:

    rule fetch_dataset:
        output:
            DATASET_STAMP,
        params:
            repo=DATASET,
            revision=DATA["shards"].get("revision", "main"),
            folder=DATASET_DIR,
            files=DATASET_FILES,
            caption=f"--caption-column {PROMPTS_FROM_SHARDS}" if PROMPTS_FROM_SHARDS else "",
        log:
            f"{ROOT}/logs/fetch_dataset.log",
        resources:
            hub=1,  # fetches share the lock file: the profile runs one at a time
            runtime=res("fetch_dataset", "runtime", 1440),
            mem_mb=res("fetch_dataset", "mem_mb", 8000),
        conda:
            ENV
        shell:
            "sidrepro fetch-dataset {params.repo} --revision {params.revision} --out {params.folder} "
            "--files {params.files:q} {params.caption} --stamp {output} > {log} 2>&1"


if PROMPTS_FROM_SHARDS:

    rule prompts_from_shards:
        input:
            shards=shard_inputs(),
            # The reference's captions.txt lists every COCO-2014 val caption: training must never see one.
            reference=f"{REFERENCE}/manifest.json",
        output:
            PROMPTS,
        params:
            shards=SHARDS,
            column=PROMPTS_FROM_SHARDS,
            exclude=lambda wc, input: os.path.join(os.path.dirname(input.reference), "captions.txt"),
        log:
            f"{ROOT}/logs/prompts_from_shards.log",
        resources:
            runtime=res("prompts", "runtime", 120),
            mem_mb=res("prompts", "mem_mb", 8000),
        conda:
            ENV
        shell:
            "sidrepro prompts --shards {params.shards} --caption-column {params.column} --exclude {params.exclude} "
            "--out {output} > {log} 2>&1"


if not TINY_CLIP:

    rule fetch_clip:
        output:
            CLIP_STAMP,
        params:
            cache=CLIP_CACHE,
            protocol=PROTOCOL,
        log:
            f"{ROOT}/logs/fetch_clip.log",
        resources:
            hub=1,
            runtime=res("fetch_clip", "runtime", 120),
            mem_mb=res("fetch_clip", "mem_mb", 4000),
        conda:
            ENV
        shell:
            "sidrepro fetch-clip --protocol {params.protocol} --cache {params.cache} --stamp {output} > {log} 2>&1"


if COCO_DOWNLOAD:

    rule fetch_coco:
        output:
            COCO_STAMP,
        params:
            coco=COCO_DIR,
        log:
            f"{ROOT}/logs/fetch_coco.log",
        resources:
            hub=1,  # a download: serialised with the others by the profile
            runtime=res("fetch_coco", "runtime", 480),
            mem_mb=res("fetch_coco", "mem_mb", 4000),
        conda:
            ENV
        shell:
            "sidrepro fetch-coco --coco-dir {params.coco} --stamp {output} > {log} 2>&1"


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
        # The synthetic captions file, or the download stamp (the real COCO folder itself is not an input).
        coco_inputs() + coco_fetch_inputs(),
    output:
        f"{REFERENCE}/manifest.json",
    params:
        coco=lambda wc, input: os.path.dirname(os.path.dirname(input[0])) if SYNTHETIC_COCO else COCO_DIR,
        reference=parent_folder,
        protocol=PROTOCOL,
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
        "sidrepro coco --coco-dir {params.coco} --out {params.reference} --workers {threads} "
        "--stats {params.protocol} > {log} 2>&1"
