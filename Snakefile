"""SiD-DiT reproduction workflow: teachers -> data -> distill -> export -> sample -> evaluate -> tables.

Every rule calls the ``sidrepro`` command line. The default config is the paper's; the laptop smoke run is
``snakemake --cores 2 --configfile=workflow/config/smoke.yaml results/table1.csv results/table2.csv`` (the ``=``
matters: ``--configfile`` takes several values).
"""


# The paper config is the default; `--configfile workflow/config/smoke.yaml` replaces it instead of being merged
# into it (a merge would add the paper's teachers to the smoke run). `--config KEY=VALUE` still extends either.
if "teachers" not in config:

    configfile: "workflow/config/paper.yaml"


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"



wildcard_constraints:
    teacher="|".join(map(re.escape, config["teachers"])) or "NONE",
    setting="data-free|data-aided",
    shard=r"\d+",
    table=r"table\d+",
    model="|".join(map(re.escape, model_ids())) or "NONE",


include: "workflow/rules/teachers.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/geneval.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/prefetch.smk"


# Jobs of seconds (merges, grids, curves, tables, small text files) run where Snakemake runs, never as batch jobs:
# a paper run would otherwise queue ~150 of them behind the GPU jobs. The `localrules:` directive of the names this
# config defines (prompts and the GenEval rules exist only in some configs).
workflow.localrules(*(set(LOCAL_RULES) & {rule.name for rule in workflow.rules}))


rule all:
    input:
        expand("{results}/{table}.csv", results=config["results"], table=TABLES),
    default_target: True
