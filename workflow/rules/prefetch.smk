"""``snakemake prefetch``: everything the configured run needs from the network, done once on a machine that has it.

Its inputs (``prefetch_inputs``, common.smk) are the outputs of every rule that downloads or installs: ``fetch``
(teacher and baseline snapshots), ``fetch_dataset``, ``fetch_coco``, ``fetch_clip``, ``scorer_weights`` (official),
``geneval_metadata`` and ``geneval_fetch_models`` (official), and the separate environments' pip installs
(``geneval_env``, ``scorer_env``). The smoke config downloads nothing; its prefetch builds the separate environments.

On a cluster whose compute nodes have no internet, run it on the login node without a profile, so that its jobs run
there (``snakemake --cores 4 prefetch``), then the profile run. Through the SLURM profile the download jobs would be
submitted to the offline compute nodes and fail. The download rules are not ``localrules``: that would make every
profile run download hundreds of GB and compile GenEval's environment inside the login node's Snakemake process,
also on clusters whose compute nodes do have network.

Afterwards no download rule is scheduled (its outputs exist) and every job runs with the hub libraries offline
(``offline_after_prefetch``): anything that still reached for the hub would fail at once instead of waiting on
network timeouts.
"""

offline_after_prefetch()


rule prefetch:
    input:
        prefetch_inputs(),
