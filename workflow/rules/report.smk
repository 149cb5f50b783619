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
        f"{ROOT}/runs/{{teacher}}/{{setting}}.done",
    output:
        csv=f"{ROOT}/report/fid/{{teacher}}--{{setting}}.csv",
        png=report(
            f"{ROOT}/report/fid/{{teacher}}--{{setting}}.png",
            caption="../report/fid_curve.rst",
            category="FID per snapshot",
            labels={"teacher": "{teacher}", "setting": "{setting}"},
        ),
    params:
        run=lambda wc: run_folder(wc.teacher, wc.setting),
        rule=SELECT["rule"],
    log:
        f"{ROOT}/logs/report/fid-{{teacher}}--{{setting}}.log",
    conda:
        ENV
    shell:
        # The run scored its snapshots as it trained; this only draws those scores.
        "sidrepro fid-curve --run {params.run} --select {params.rule} --out {output.csv} --png {output.png} "
        "> {log} 2>&1"
