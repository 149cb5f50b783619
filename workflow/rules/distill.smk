"""SiD distillation per teacher x setting, then export of the student pipeline.

Run folders (checkpoints, logs, grids) are not rule outputs: Snakemake never deletes them, so a job killed by a time
limit resumes from its last checkpoint when the workflow runs again. The declared output is a small stamp, a copy of
the run's resolved config written only after `sidrepro distill` finished. Data-aided runs continue from the
teacher's finished data-free run (`--set init_from=...`).
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
        nproc=lambda wc, resources: max(1, int(resources.gpu)),
    log:
        f"{ROOT}/logs/distill/{{teacher}}-{{setting}}.log",
    threads: res("distill", "threads", 1)
    resources:
        gpu=distill_res("gpu", 0),
        nodes=distill_res("nodes", 1),
        mem_mb=distill_res("mem_mb", 8000),
        runtime=distill_res("runtime", 60),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "sidrepro distill --teacher {wildcards.teacher} --setting {wildcards.setting} --out {params.run} "
        "--snapshot {params.snapshot} {params.args} --nproc {params.nproc} --nnodes {resources.nodes} --quiet "
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
