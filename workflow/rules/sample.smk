"""Sharded sampling of every measured model on the protocol's caption subset, then the manifest merge.

Each shard job writes its PNGs and its own manifest into the model's sample folder (resumable: the folder is not an
output, so a failed shard keeps its finished images) and a stamp; the merge checks that every planned prompt id is
there exactly once. A shard that needs longer than its job's time limit stops between batches ahead of the limit and
requeues its SLURM job (`--on-stop requeue`), which finishes it; the stamp is written only for a finished shard.
"""


rule sample:
    input:
        sample_inputs,
    output:
        f"{ROOT}/samples/{{model}}/.shard-{{shard}}-of-{NUM_SHARDS}.done",
    params:
        who=sample_who,
        folder=parent_folder,
        reference=REFERENCE,
        num_shards=NUM_SHARDS,
        subset=config["sample"]["subset"],
        batch=config["sample"]["batch"],
    log:
        f"{ROOT}/logs/sample/{{model}}-{{shard}}.log",
    threads: res("sample", "threads", 1)
    resources:
        gpu=res("sample", "gpu", 0),
        mem_mb=res("sample", "mem_mb", 8000),
        runtime=res("sample", "runtime", 60),
    conda:
        ENV
    shell:
        "export OMP_NUM_THREADS={threads}; "
        # A retrained model finds its old samples in the folder (not an output): they move to .superseded/.
        "sidrepro sample {params.who} --on-plan-change restart --reference {params.reference} "
        "--subset {params.subset} --out {params.folder} "
        "--shard {wildcards.shard} --num-shards {params.num_shards} --batch {params.batch} --on-stop requeue --quiet "
        "> {log} 2>&1 && touch {output}"


rule merge_samples:
    input:
        expand(f"{ROOT}/samples/{{{{model}}}}/.shard-{{shard}}-of-{NUM_SHARDS}.done", shard=range(NUM_SHARDS)),
    output:
        f"{ROOT}/samples/{{model}}/manifest.jsonl",
    params:
        folder=parent_folder,
    log:
        f"{ROOT}/logs/merge/{{model}}.log",
    conda:
        ENV
    shell:
        "sidrepro merge-samples {params.folder} > {log} 2>&1"
