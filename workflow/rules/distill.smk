"""SiD distillation per teacher x setting, then export of the student pipeline.

Run folders (checkpoints, logs, grids) are not rule outputs: Snakemake never deletes them, so a job killed by a time
limit resumes from its last checkpoint when the workflow runs again. The declared output is a small stamp, a copy of
the run's resolved config written only after `sidrepro distill` finished. Data-aided runs continue from the
teacher's finished data-free run (`--set init_from=...`). When Snakemake reruns a distillation because its
parameters changed, the trainer moves the old run into `superseded/` and starts afresh (`--on-config-change
restart`) instead of resuming a checkpoint trained with other settings.

Selection: every `snapshot_ticks` ticks (and at the end) the run writes a generator snapshot and scores it under
the evaluation protocol inside the same job (FID and CLIP on the protocol's selection captions, sampled by all of
the job's ranks with the live generator); snapshots no rule can choose any more are deleted as better ones appear.
`export` writes the snapshot that `evaluate.select.rule` chooses (sidrepro/selection.py), and the student's
metadata, metrics and table row name it.

GPUs: the config's ``gpu`` is GPUs per node and ``nodes`` the node count (per teacher, or the rule's). The job asks
for ``gpu`` x ``nodes`` GPUs in all (SLURM's --gpus, a count per job, which the profile's GPU type turns into
--gpus=TYPE:N) on ``nodes`` whole nodes (--exclusive): on nodes of ``gpu`` GPUs each that is ``gpu`` per node, and the
launcher refuses an uneven split. `sidrepro distill` starts ``gpu`` ranks per node, one torchrun per node of the
allocation (sidrepro/commands/launch.py), each rank with the node's CPUs divided among the node's ranks as threads.

Time limits: the job's runtime is the cluster profile's cap, not a number of this config. `sidrepro distill` stops
ahead of its job's limit with a checkpoint and, with ``--on-stop requeue``, requeues its own SLURM job, which then
resumes; the stamp is written only when the run is finished (exit status 0), never after a stop (status 75). Each
job's log replaces the last one's; the run folder's ``history.jsonl`` keeps one line per job (how and where it ended).
"""


rule distill:
    input:
        distill_inputs,
        SELECT_INPUTS,
    output:
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        snapshot=lambda wc: teacher_snapshot(wc.teacher),
        args=distill_args,
        select=select_args,
        clip_cache=CLIP_CACHE,
        nproc=lambda wc: max(1, distill_res("gpu", 0)(wc)),  # ranks per node
        threads_per_rank=lambda wc, threads: max(1, threads // max(1, distill_res("gpu", 0)(wc))),
    log:
        f"{ROOT}/logs/distill/{{teacher}}-{{setting}}.log",
    threads: res("distill", "threads", 1)
    resources:
        gpu=lambda wc: distill_res("gpu", 0)(wc) * distill_res("nodes", 1)(wc),
        nodes=distill_res("nodes", 1),
        mem_mb=distill_res("mem_mb", 8000),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={params.threads_per_rank} SIDREPRO_CLIP_CACHE={params.clip_cache}; "
        "sidrepro distill --teacher {wildcards.teacher} --setting {wildcards.setting} --out {params.run} "
        "--snapshot {params.snapshot} {params.args} {params.select} --nproc {params.nproc} "
        "--nnodes {resources.nodes} "
        "--on-config-change restart --on-stop requeue --quiet "
        "> {log} 2>&1 && cp {params.run}/config.json {output}"


rule export:
    input:
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    output:
        directory(f"{ROOT}/students/{{teacher}}--{{setting}}"),
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        snapshot=lambda wc: teacher_snapshot(wc.teacher),
        rule=SELECT["rule"],
    log:
        f"{ROOT}/logs/export/{{teacher}}--{{setting}}.log",
    resources:
        mem_mb=res("export", "mem_mb", 16000),
        runtime=res("export", "runtime", 30),
    conda:
        ENV
    shell:
        "sidrepro export --run {params.run} --out {output} --snapshot {params.snapshot} --select {params.rule} "
        "> {log} 2>&1"
