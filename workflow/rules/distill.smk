"""SiD distillation per teacher x setting, then export of the student pipeline.

Run folders (checkpoints, logs, grids) are not rule outputs: Snakemake never deletes them, so a job killed by a time
limit resumes from its last checkpoint when the workflow runs again. The declared output is a small stamp, a copy of
the run's resolved config written only after `sidrepro distill` finished. Data-aided runs continue from the
teacher's finished data-free run (`--set init_from=...`). When Snakemake reruns a distillation because its
parameters changed, the trainer moves the old run into `superseded/` and starts afresh (`--on-config-change
restart`) instead of resuming a checkpoint trained with other settings.

GPUs: the config's ``gpu`` is GPUs per node and ``nodes`` the node count (per teacher, or the rule's). A one-node
job asks for them as ``gpu`` (SLURM's --gpus, a count per job, and the local profile's GPU cap); a multi-node job as
``gres: gpu:N``, a count per node (--gpus would spread N over all nodes), and `sidrepro distill` then starts one
torchrun per node of the allocation (sidrepro/commands/launch.py).
"""


rule distill:
    input:
        distill_inputs,
    output:
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        snapshot=lambda wc: teacher_snapshot(wc.teacher),
        args=distill_args,
        # ranks per node: the one-node job's GPUs, or the per-node count of a multi-node job's gres (gpu:N)
        nproc=lambda wc, resources: max(1, int(resources.gpu) or int(resources.gres.rpartition(":")[2] or 0)),
    log:
        f"{ROOT}/logs/distill/{{teacher}}-{{setting}}.log",
    threads: res("distill", "threads", 1)
    resources:
        gpu=lambda wc: distill_res("gpu", 0)(wc) if distill_res("nodes", 1)(wc) == 1 else 0,
        gres=lambda wc: f"gpu:{distill_res('gpu', 0)(wc)}" if distill_res("nodes", 1)(wc) > 1 else "",
        nodes=distill_res("nodes", 1),
        mem_mb=distill_res("mem_mb", 8000),
        runtime=distill_res("runtime", 60),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "sidrepro distill --teacher {wildcards.teacher} --setting {wildcards.setting} --out {params.run} "
        "--snapshot {params.snapshot} {params.args} --nproc {params.nproc} --nnodes {resources.nodes} "
        "--on-config-change restart --quiet "
        "> {log} 2>&1 && cp {params.run}/config.json {output}"


rule export:
    input:
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    output:
        directory(f"{ROOT}/students/{{teacher}}--{{setting}}"),
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        snapshot=lambda wc: teacher_snapshot(wc.teacher),
    log:
        f"{ROOT}/logs/export/{{teacher}}--{{setting}}.log",
    resources:
        mem_mb=res("export", "mem_mb", 16000),
        runtime=res("export", "runtime", 30),
    conda:
        ENV
    shell:
        "sidrepro export --run {params.run} --out {output} --snapshot {params.snapshot} > {log} 2>&1"
