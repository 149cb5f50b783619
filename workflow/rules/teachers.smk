"""Teacher and baseline weights: the tiny zoo (smoke, ``source: zoo``) or pinned hub snapshots (paper)."""

if USE_ZOO:

    rule zoo:
        output:
            expand("{zoo}/{name}/zoo.json", zoo=ZOO, name=zoo_entries()),
        params:
            zoo=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
            names=" ".join(zoo_entries()),
        log:
            f"{ROOT}/logs/zoo.log",
        conda:
            ENV
        shell:
            "sidrepro zoo --out {params.zoo} --names {params.names} > {log} 2>&1"

else:

    rule fetch:
        output:
            f"{ROOT}/fetched/{{name}}.done",
        params:
            snapshots=SNAPSHOTS,
        log:
            f"{ROOT}/logs/fetch/{{name}}.log",
        resources:
            hub=1,  # fetches share the lock file and the hub cache: the profile runs one at a time
            runtime=res("fetch", "runtime", 240),
            mem_mb=res("fetch", "mem_mb", 4000),
        conda:
            ENV
        shell:
            "sidrepro fetch {wildcards.name} --snapshots {params.snapshots} > {log} 2>&1 && touch {output}"
