"""Paper-vs-ours tables: every paper row of a table with our metrics, difference, protocol and provenance."""


rule table:
    input:
        metrics=lambda wc: [f"{ROOT}/metrics/{m}.json" for m in model_ids(wc.table)],
        paper="workflow/resources/paper_tables.csv",
    output:
        f"{config['results']}/{{table}}.csv",
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
        "--map {params.mapping} --paper-csv {input.paper} --run {params.run} --out {output} > {log} 2>&1"
