"""Paper-vs-ours tables: every paper row of a table with our metrics (FID and CLIP from `evaluate`, and the
`tables.scores` columns: GenEval and the preference scores), difference, protocol and provenance; the measured numbers
also as JSON, which DVC lists as metrics."""


rule table:
    input:
        metrics=lambda wc: [f"{ROOT}/metrics/{m}.json" for m in model_ids(wc.table)],
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
