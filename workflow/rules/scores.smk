"""Preference metrics of every measured model (the v2 tables' Aesthetic, HPSv2, ImageReward, PickScore) on its merged
sample folder (the same images as FID/CLIP), into ``{ROOT}/scores/{model}/{scorer}.json``. Target: ``snakemake
scores``.

- scorer_env: ``sidrepro env`` builds (once, then reuses) the venvs of workflow/envs/hpsv2.txt and image_reward.txt
  under scores.envs; the main environment is never touched. A stamp (a copy of the venv's env.json) stands for each.
- scorer_weights: the real weights at commits pinned in env/hub-lock.json (``scores.weights: official``, serialised
  with the other downloads by ``hub=1``), or tiny random-weight models of the same classes built offline
  (``scores.weights: tiny``, smoke; hpsv2 and image_reward build theirs in their own venv).
- score: ``sidrepro score`` per model x scorer; hpsv2 and image_reward run through their venv's python.
"""

if SCORES:

    rule scorer_env:
        input:
            "workflow/envs/{scorer}.txt",
        output:
            f"{SCORER_DIR}/envs/{{scorer}}.json",
        params:
            env=lambda wc: scorer_env_dir(wc.scorer),
        log:
            f"{ROOT}/logs/scores/env-{{scorer}}.log",
        wildcard_constraints:
            scorer="|".join(SCORER_OWN_ENV),
        resources:
            mem_mb=res("scorer_env", "mem_mb", 8000),
            runtime=res("scorer_env", "runtime", 120),
        conda:
            ENV
        shell:
            "sidrepro env --spec {input} --out {params.env} --log {log} >> {log} 2>&1 && "
            "cp {params.env}/env.json {output}"

    rule scorer_weights:
        input:
            scorer_weights_inputs,
        output:
            f"{SCORER_WEIGHTS}/{{scorer}}/scorer.json",
        params:
            folder=parent_folder,
            args=scorer_weights_args,
        log:
            f"{ROOT}/logs/scores/weights-{{scorer}}.log",
        wildcard_constraints:
            scorer="aesthetic|hpsv2|image_reward|pickscore",
        resources:
            hub=0 if SCORES_TINY else 1,
            mem_mb=res("scorer_weights", "mem_mb", 8000),
            runtime=res("scorer_weights", "runtime", 240),
        conda:
            ENV
        shell:
            "sidrepro score-weights --scorer {wildcards.scorer} --out {params.folder} {params.args} > {log} 2>&1"

    rule score:
        input:
            samples=f"{ROOT}/samples/{{model}}/manifest.jsonl",
            weights=f"{SCORER_WEIGHTS}/{{scorer}}/scorer.json",
            env=scorer_env_inputs,
        output:
            f"{ROOT}/scores/{{model}}/{{scorer}}.json",
        params:
            samples=lambda wc, input: os.path.dirname(input.samples),
            weights=lambda wc, input: os.path.dirname(input.weights),
            env=scorer_env_flag,
            device=f"--device {SCORES['device']}" if "device" in SCORES else "",
            batch=SCORES.get("batch", 32),
        log:
            f"{ROOT}/logs/scores/{{model}}/{{scorer}}.log",
        wildcard_constraints:
            scorer="aesthetic|hpsv2|image_reward|pickscore",
        threads: res("score", "threads", 1)
        resources:
            gpu=res("score", "gpu", 0),
            mem_mb=res("score", "mem_mb", 16000),
            runtime=res("score", "runtime", 120),
        conda:
            ENV
        shell:
            "export OMP_NUM_THREADS={threads}; "
            "sidrepro score --scorer {wildcards.scorer} --samples {params.samples} --weights {params.weights} "
            "--out {output} {params.env} {params.device} --batch {params.batch} > {log} 2>&1"

    rule scores:
        input:
            score_targets(),
