# Data stage: download (checksum-verified) -> convert (any source format to h5ad) -> preprocess (normalize, symbols, QC) -> cell-sentence tables.


wildcard_constraints:
    dataset="|".join(DATASETS) or "__none__",


localrules:
    download,
    download_obs_table,
    data,


rule download:
    input:
        source_files,
    output:
        raw=f"{RESULTS}/raw/{{dataset}}.download",
        sha256=f"{RESULTS}/raw/{{dataset}}.sha256",
    log:
        f"{LOGS}/download/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        code=script_code("download.py"),
        dataset=dataset_params("source", "sha256"),
        download=lambda wildcards, output: DOWNLOAD.params(),  # how to fetch: reruns nothing
    script:
        "../workflow/scripts/download.py"


rule download_obs_table:
    input:
        obs_table_files,
    output:
        raw=f"{RESULTS}/raw/{{dataset}}.obs_table",
        sha256=f"{RESULTS}/raw/{{dataset}}.obs_table.sha256",
    log:
        f"{LOGS}/download/{{dataset}}.obs_table.log",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        code=script_code("download.py"),
        dataset=obs_table_params,
        download=lambda wildcards, output: DOWNLOAD.params(),  # how to fetch: reruns nothing
    script:
        "../workflow/scripts/download.py"


rule convert:
    input:
        unpack(convert_inputs),
    output:
        h5ad=f"{RESULTS}/converted/{{dataset}}.h5ad",
        report=f"{RESULTS}/converted/{{dataset}}.convert.json",
    log:
        f"{LOGS}/convert/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        code=script_code("convert.py"),
        dataset=dataset_params(
            "source",
            "format",
            "member",
            "transpose",
            "assay",
            "layer",
            "obs_table",
            "obs_recode",
            "obs_filter",
        ),
    script:
        "../workflow/scripts/convert.py"


rule preprocess:
    input:
        rules.convert.output.h5ad,
        gene_map=gene_map_files,
    output:
        h5ad=f"{RESULTS}/processed/{{dataset}}.h5ad",
        qc=f"{RESULTS}/processed/{{dataset}}.qc.json",
    log:
        f"{LOGS}/preprocess/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        code=script_code("preprocess.py"),
        dataset=dataset_params(
            "species",
            "labels",
            "metadata",
            "constants",
            "gene_symbol_key",
            "gene_map",
            "layer",
            "split_by",
            "pairing",
        ),
        preprocess=PREPROCESS.params(),
    script:
        "../workflow/scripts/preprocess.py"


rule cell_sentences:
    input:
        rules.preprocess.output.h5ad,
        ood_peers=ood_peer_files,
    output:
        table=f"{RESULTS}/cell_sentences/{{dataset}}.parquet",
        summary=f"{RESULTS}/cell_sentences/{{dataset}}.summary.json",
    log:
        f"{LOGS}/cell_sentences/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=script_code("cell_sentences.py"),
        dataset=dataset_params("role", "ood_labels"),
        cells=split_context_params,
        cell_sentence=CELL_SENTENCE.params(),
        splits=SPLITS.params(),
    script:
        "../workflow/scripts/cell_sentences.py"


rule data:
    input:
        expand(rules.cell_sentences.output.table, dataset=USED_DATASETS),
