"""Figures for `snakemake --report`: a captioned sample grid per measured model and the training curves of every
distillation run. Both are inputs of the tables, so building a table builds its figures."""


rule sample_grid:
    input:
        f"{ROOT}/samples/{{model}}/manifest.jsonl",
    output:
        report(
            f"{ROOT}/report/grids/{{model}}.png",
            caption="../report/grid.rst",
            category="Samples",
            labels={"model": "{model}"},
        ),
    params:
        folder=lambda wc, input: os.path.dirname(input[0]),
    log:
        f"{ROOT}/logs/report/grid-{{model}}.log",
    conda:
        ENV
    shell:
        "sidrepro grid {params.folder} --out {output} > {log} 2>&1"


rule training_curves:
    input:
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    output:
        report(
            f"{ROOT}/report/curves/{{teacher}}--{{setting}}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"teacher": "{teacher}", "setting": "{setting}"},
        ),
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
    log:
        f"{ROOT}/logs/report/curves-{{teacher}}--{{setting}}.log",
    conda:
        ENV
    shell:
        # The trainer draws the curves when it stops; the run folder is not an output, so copy them out of it.
        "cp {params.run}/losses.png {output} 2> {log}"


rule fid_curve:
    input:
        run=f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
        reference=f"{REFERENCE}/manifest.json",
    output:
        csv=f"{ROOT}/report/fid/{{teacher}}--{{setting}}.csv",
        png=report(
            f"{ROOT}/report/fid/{{teacher}}--{{setting}}.png",
            caption="../report/fid_curve.rst",
            category="FID per checkpoint",
            labels={"teacher": "{teacher}", "setting": "{setting}"},
        ),
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        snapshot=lambda wc: teacher_snapshot(wc.teacher),
        reference=lambda wc, input: os.path.dirname(input.reference),
        protocol=PROTOCOL,
        subset=FID_CURVE["subset"],
        images=FID_CURVE["count"],
    log:
        f"{ROOT}/logs/report/fid-{{teacher}}--{{setting}}.log",
    threads: res("fid_curve", "threads", 1)
    resources:
        gpu=res("fid_curve", "gpu", 0),
        mem_mb=res("fid_curve", "mem_mb", 8000),
        runtime=res("fid_curve", "runtime", 60),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={threads}; "
        "sidrepro fid-curve --run {params.run} --snapshot {params.snapshot} --reference {params.reference} "
        "--protocol {params.protocol} --subset {params.subset} --count {params.images} --out {output.csv} "
        "--png {output.png} > {log} 2>&1"
