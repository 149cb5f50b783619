"""Paper-vs-ours tables: every paper row of a table with our metrics (FID and CLIP from `evaluate`, and those
`tables.scores` columns that the table prints in `tables.version`: GenEval and the preference scores), the resolution,
steps and guidance each row was sampled with, difference, protocol and provenance; the measured numbers also as JSON,
which DVC lists as metrics.

The sweep table (``results/sweep.csv``, only with a `sweep:` section; not part of `all`): one row per swept preset
value next to the row it varies, e.g. ``snakemake --cores all results/sweep.csv``.
"""


rule table:
    input:
        metrics=lambda wc: [f"{ROOT}/metrics/{m}.json" for m in table_model_ids(wc.table)],
        paper="workflow/resources/paper_tables.csv",
        figures=table_figures,
        scores=table_scores,
    output:
        csv=report(
            f"{config['results']}/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
        json=f"{config['results']}/{{table}}.json",
    params:
        mapping=lambda wc: shlex.quote(json.dumps(table_mapping(wc.table), sort_keys=True)),
        version=config["tables"]["version"],
        run=config["run"],
    log:
        f"{ROOT}/logs/table/{{table}}.log",
    conda:
        ENV
    shell:
        "sidrepro table --table {wildcards.table} --version {params.version} --metrics {input.metrics} "
        "--scores {input.scores} --map {params.mapping} --paper-csv {input.paper} --run {params.run} --out {output.csv} "
        "--json {output.json} > {log} 2>&1"


if config.get("sweep"):

    rule sweep_table:
        input:
            metrics=[f"{ROOT}/metrics/{m}.json" for m in sweep_models()],
            paper=PAPER_CSV,
            scores=sweep_scores(),
        output:
            report(SWEEP_TABLE, caption="../report/sweep.rst", category="Tables", labels={"table": "sweep"}),
        params:
            mapping=shlex.quote(json.dumps(sweep_mapping(), sort_keys=True)),
            tables=" ".join(sorted({model_table(m) for m in sweep_models()})),
            version=config["tables"]["version"],
            run=config["run"],
        log:
            f"{ROOT}/logs/table/sweep.log",
        conda:
            ENV
        shell:
            "sidrepro table --table {params.tables} --measured-only --version {params.version} "
            "--metrics {input.metrics} --scores {input.scores} --map {params.mapping} --paper-csv {input.paper} "
            "--run {params.run} --out {output} > {log} 2>&1"
