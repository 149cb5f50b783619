"""GenEval (djghosh13/geneval): 553 prompts x 4 images per model, scored by Mask2Former + CLIP in a separate pinned
environment, into ``{ROOT}/scores/{model}/geneval.json``. Target: ``snakemake geneval``.

- geneval_env: ``sidrepro env`` builds (once, then reuses) the venv of workflow/envs/geneval.txt at geneval.env:
  Python 3.9, torch 1.12.1, mmcv-full 1.7.1 compiled for the CPU, mmdet 2.27.0, open_clip 2.20.0. The main
  environment is never touched. A stamp (a copy of the venv's env.json) stands for it in the graph.
- The metadata file: fetched at the pinned GenEval commit with a sha256 check (``metadata: official``), or a few
  smoke lines (``metadata: smoke``), or your own file (a path).
- The models: Mask2Former Swin-S weights (sha256-checked) and CLIP ViT-L-14/openai fetched once
  (``models: official``, serialised with the other downloads by ``hub=1``), or tiny random-weight models of the same
  classes built offline (``models: tiny``, smoke).
- Sampling: the same sharded sampler as FID/CLIP (``sidrepro sample --captions``), 4 images per prompt with distinct
  prompt ids (hence seeds), saved at geneval.resolution_out.
"""

if GENEVAL:

    rule geneval_env:
        input:
            GENEVAL_SPEC,
        output:
            GENEVAL_ENV_STAMP,
        params:
            env=GENEVAL_ENV,
        log:
            f"{ROOT}/logs/geneval/env.log",
        threads: res("geneval_env", "threads", 1)
        resources:
            mem_mb=res("geneval_env", "mem_mb", 8000),
            runtime=res("geneval_env", "runtime", 180),
        conda:
            ENV
        shell:
            # mmcv-full compiles its ops against the venv's torch: for the CPU (no GPU visible), {threads} at a time.
            "export CUDA_VISIBLE_DEVICES= MAX_JOBS={threads}; "
            "sidrepro env --spec {input} --out {params.env} --log {log} >> {log} 2>&1 && "
            "cp {params.env}/env.json {output}"

    if GENEVAL_SOURCE == "official":

        rule geneval_metadata:
            output:
                GENEVAL_METADATA,
            log:
                f"{ROOT}/logs/geneval/metadata.log",
            resources:
                hub=1,
            conda:
                ENV
            shell:
                "sidrepro geneval fetch-metadata --out {output} > {log} 2>&1"

    elif GENEVAL_SOURCE == "smoke":

        rule geneval_smoke_metadata:
            output:
                GENEVAL_METADATA,
            log:
                f"{ROOT}/logs/geneval/metadata.log",
            conda:
                ENV
            shell:
                "python workflow/scripts/geneval_smoke_metadata.py --out {output} > {log} 2>&1"

    rule geneval_prompts:
        input:
            GENEVAL_METADATA,
        output:
            f"{GENEVAL_DIR}/captions.jsonl",
        params:
            n=GENEVAL.get("images_per_prompt", 4),
        log:
            f"{ROOT}/logs/geneval/prompts.log",
        conda:
            ENV
        shell:
            "sidrepro geneval prompts --metadata {input} --out {output} --images-per-prompt {params.n} > {log} 2>&1"

    if GENEVAL_TINY:

        rule geneval_tiny_models:
            input:
                GENEVAL_ENV_STAMP,
            output:
                GENEVAL_MODELS,
            params:
                env=GENEVAL_ENV,
                folder=parent_folder,
                favour=f"--favour {shlex.quote(GENEVAL['favour'])}" if GENEVAL.get("favour") else "",
            log:
                f"{ROOT}/logs/geneval/models.log",
            conda:
                ENV
            shell:
                "sidrepro geneval tiny --env {params.env} --out {params.folder} {params.favour} > {log} 2>&1"

    else:

        rule geneval_fetch_models:
            input:
                GENEVAL_ENV_STAMP,
            output:
                GENEVAL_MODELS,
            params:
                env=GENEVAL_ENV,
                folder=parent_folder,
                sha=f"--detector-sha256 {GENEVAL['detector_sha256']}" if GENEVAL.get("detector_sha256") else "",
            log:
                f"{ROOT}/logs/geneval/models.log",
            resources:
                hub=1,
                runtime=res("geneval_fetch", "runtime", 60),
                mem_mb=res("geneval_fetch", "mem_mb", 8000),
            conda:
                ENV
            shell:
                "sidrepro geneval fetch-models --env {params.env} --out {params.folder} {params.sha} > {log} 2>&1"

    rule geneval_sample:
        input:
            geneval_sample_inputs,
        output:
            f"{GENEVAL_DIR}/samples/{{model}}/.shard-{{shard}}-of-{GENEVAL_SHARDS}.done",
        params:
            who=sample_who,
            folder=parent_folder,
            captions=f"{GENEVAL_DIR}/captions.jsonl",
            num_shards=GENEVAL_SHARDS,
            batch=GENEVAL.get("batch", config["sample"]["batch"]),
            seed=GENEVAL.get("seed", 0),
            resolution=GENEVAL.get("resolution_out", 512),
        log:
            f"{ROOT}/logs/geneval/sample/{{model}}-{{shard}}.log",
        threads: res("sample", "threads", 1)
        resources:
            gpu=res("sample", "gpu", 0),
            mem_mb=res("sample", "mem_mb", 8000),
            runtime=res("sample", "runtime", 60),
        conda:
            ENV
        shell:
            "export OMP_NUM_THREADS={threads}; "
            "sidrepro sample {params.who} --on-plan-change restart --captions {params.captions} "
            "--resolution-out {params.resolution} "
            "--out {params.folder} --shard {wildcards.shard} --num-shards {params.num_shards} --batch {params.batch} "
            "--seed {params.seed} --on-stop requeue --quiet > {log} 2>&1 && touch {output}"

    rule geneval_merge:
        input:
            expand(
                f"{GENEVAL_DIR}/samples/{{{{model}}}}/.shard-{{shard}}-of-{GENEVAL_SHARDS}.done",
                shard=range(GENEVAL_SHARDS),
            ),
        output:
            f"{GENEVAL_DIR}/samples/{{model}}/manifest.jsonl",
        params:
            folder=parent_folder,
        log:
            f"{ROOT}/logs/geneval/merge/{{model}}.log",
        conda:
            ENV
        shell:
            "sidrepro merge-samples {params.folder} > {log} 2>&1"

    rule geneval_score:
        input:
            samples=f"{GENEVAL_DIR}/samples/{{model}}/manifest.jsonl",
            metadata=GENEVAL_METADATA,
            env=GENEVAL_ENV_STAMP,
            models=GENEVAL_MODELS,
        output:
            f"{ROOT}/scores/{{model}}/geneval.json",
        params:
            samples=lambda wc, input: os.path.dirname(input.samples),
            env=GENEVAL_ENV,
            models=lambda wc, input: os.path.dirname(input.models),
            work=f"{GENEVAL_DIR}/work/{{model}}",
            device=GENEVAL.get("device", "cpu"),
            partial="--partial" if GENEVAL.get("partial", False) else "",
            n=GENEVAL.get("images_per_prompt", 4),
        log:
            f"{ROOT}/logs/geneval/score/{{model}}.log",
        threads: res("geneval_score", "threads", 1)
        resources:
            gpu=res("geneval_score", "gpu", 0),
            mem_mb=res("geneval_score", "mem_mb", 16000),
            runtime=res("geneval_score", "runtime", 240),
        conda:
            ENV
        shell:
            "export OMP_NUM_THREADS={threads}; "
            "sidrepro geneval score --samples {params.samples} --metadata {input.metadata} --env {params.env} "
            "--detector {params.models} --out {output} --work {params.work} --device {params.device} "
            "--images-per-prompt {params.n} {params.partial} --log {log} >> {log} 2>&1"

    rule geneval:
        input:
            geneval_targets(),
