# Writes the R-made fixtures of tests/data/real/ with the real writers (run once, by make_fixtures.sh; CI only
# reads the committed files). Debian bookworm: r-base-core 4.2, r-bioc-singlecellexperiment 1.20,
# SummarizedExperiment 1.28, r-cran-seuratobject 4.1.3, r-bioc-dropletutils 1.18.
#
# Every object holds the same 120 genes x 40 cells counts; expected/ holds what a reader must find, written by R
# (counts.mtx, logcounts.mtx, coldata.csv with NA as "NA", levels.txt: the cell_type factor's levels in order).
suppressMessages({
  library(Matrix)
  library(SingleCellExperiment)
  library(SummarizedExperiment)
  library(GenomicRanges)
  library(SeuratObject)
  library(DropletUtils)
})
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."
set.seed(26)

genes <- readLines(file.path(out, "genes.txt"))
gene_ids <- sprintf("ENSG%011d", seq_along(genes))
n_cells <- 40
cells <- sprintf("%s-1", vapply(seq_len(n_cells), function(i) paste(sample(c("A", "C", "G", "T"), 16, TRUE),
                                                                       collapse = ""), ""))
lambda <- rexp(length(genes), 0.7)
m <- matrix(rpois(length(genes) * n_cells, rep(lambda, n_cells)), nrow = length(genes),
            dimnames = list(genes, cells))
counts <- as(Matrix(m, sparse = TRUE), "CsparseMatrix")
logcounts <- counts
logcounts@x <- log2(logcounts@x + 1)

cell_type <- factor(sample(c("B cell", "T cell", "NK cell"), n_cells, TRUE),
                    levels = c("T cell", "B cell", "NK cell", "unused level"))
cell_type[c(3, 17)] <- NA
donor <- sample(c("d1", "d2"), n_cells, TRUE)
donor[5] <- NA
n_umi <- as.integer(colSums(counts))
n_umi[7] <- NA
doublet <- sample(c(TRUE, FALSE), n_cells, TRUE)
doublet[9] <- NA
score <- round(runif(n_cells), 4)
score[11] <- NA
coldata <- DataFrame(cell_type = cell_type, donor = donor, n_umi = n_umi, doublet = doublet, score = score,
                     row.names = cells)
rowdata <- DataFrame(gene_id = gene_ids, symbol = genes, row.names = genes)

dir.create(file.path(out, "expected"), showWarnings = FALSE)
writeMM(counts, file.path(out, "expected", "counts.mtx"))
writeMM(logcounts, file.path(out, "expected", "logcounts.mtx"))
write.csv(as.data.frame(coldata), file.path(out, "expected", "coldata.csv"), na = "NA")
writeLines(levels(cell_type), file.path(out, "expected", "levels.txt"))
writeLines(cells, file.path(out, "expected", "cells.txt"))

# --- SingleCellExperiment, every compression and serialization version
sce <- SingleCellExperiment(assays = list(counts = counts, logcounts = logcounts), colData = coldata,
                            rowData = rowdata)
saveRDS(sce, file.path(out, "sce_gzip.rds"))
saveRDS(sce, file.path(out, "sce_xz.rds"), compress = "xz")
saveRDS(sce, file.path(out, "sce_bzip2.rds"), compress = "bzip2")
saveRDS(sce, file.path(out, "sce_v2.rds"), version = 2)
saveRDS(sce, file.path(out, "sce_plain.rds"), compress = FALSE)
saveRDS(SingleCellExperiment(assays = list(tpm = counts), colData = coldata), file.path(out, "sce_tpm_only.rds"))

# --- SummarizedExperiment and RangedSummarizedExperiment
saveRDS(SummarizedExperiment(assays = list(counts = counts, logcounts = logcounts), colData = coldata,
                             rowData = rowdata), file.path(out, "se.rds"))
ranges <- GRanges("chr1", IRanges(seq_along(genes) * 1000, width = 500))
names(ranges) <- genes
mcols(ranges) <- rowdata
saveRDS(SummarizedExperiment(assays = list(counts = counts), colData = coldata, rowRanges = ranges),
        file.path(out, "rse.rds"))

# --- Seurat v4 objects: RNA (counts + data) and a 20-feature ADT assay
meta <- as.data.frame(coldata)
seu <- CreateSeuratObject(counts = counts, meta.data = meta, project = "fixture", min.cells = 0, min.features = 0)
seu <- SetAssayData(seu, slot = "data", new.data = logcounts, assay = "RNA")
adt <- as(Matrix(matrix(rpois(20 * n_cells, 5), nrow = 20, dimnames = list(sprintf("ADT-%02d", 1:20), cells)),
                 sparse = TRUE), "CsparseMatrix")
seu[["ADT"]] <- CreateAssayObject(counts = adt)
saveRDS(seu, file.path(out, "seurat_v4.rds"))
DefaultAssay(seu) <- "ADT"
saveRDS(seu, file.path(out, "seurat_v4_adt_active.rds"))

# --- bare matrices and a metadata data.frame
saveRDS(counts, file.path(out, "dgCMatrix.rds"))
saveRDS(as(counts, "TsparseMatrix"), file.path(out, "dgTMatrix.rds"))
saveRDS(as.matrix(counts), file.path(out, "dense_matrix.rds"))
saveRDS(meta, file.path(out, "metadata_frame.rds"))

# --- DropletUtils 10x layouts (folders and HDF5, Cell Ranger v2 and v3)
for (v in c("2", "3")) {
  write10xCounts(file.path(out, paste0("tenx_v", v)), counts, barcodes = cells, gene.id = gene_ids,
                 gene.symbol = genes, version = v, overwrite = TRUE)
  write10xCounts(file.path(out, paste0("tenx_v", v, ".h5")), counts, barcodes = cells, gene.id = gene_ids,
                 gene.symbol = genes, version = v, type = "HDF5", overwrite = TRUE)
}

# --- look-alikes of the two Hemberg-lab SingleCellExperiments of config/paper.yaml (dense assays, colData as
# their R/segerstolpe.R and R/xin.R write it), with enough genes per cell for the paper's QC (min_genes 200)
lookalike_genes <- readLines(file.path(out, "genes_lookalike.txt"))
n <- 60
dense_counts <- matrix(rpois(length(lookalike_genes) * n, 3), nrow = length(lookalike_genes),
                       dimnames = list(lookalike_genes, sprintf("ERR15%05d", seq_len(n))))
ann <- data.frame(cell_quality = rep(c("OK", "OK", "low quality cell"), length.out = n),
                  cell_type1 = rep(c("alpha", "beta", "delta", "gamma"), length.out = n),
                  disease = rep(c("normal", "type II diabetes mellitus"), each = n / 2),
                  sex = rep(c("male", "female"), length.out = n), age = rep(c("43 years", "57 years"), each = n / 2),
                  row.names = colnames(dense_counts))
seger <- SingleCellExperiment(assays = list(counts = dense_counts), colData = ann)
rowData(seger)$feature_symbol <- rownames(seger)
logcounts(seger) <- log2(dense_counts + 1)
saveRDS(seger, file.path(out, "lookalike_segerstolpe.rds"))
rpkm <- dense_counts * matrix(runif(length(dense_counts), 5, 400), nrow = nrow(dense_counts))
colnames(rpkm) <- sprintf("Sample_%d", seq_len(n))
xin_ann <- data.frame(donor.id = rep(sprintf("H%d", 1:6), length.out = n),
                      condition = rep(c("Healthy", "T2D"), each = n / 2),
                      cell_type1 = rep(c("alpha", "beta", "delta", "gamma"), length.out = n),
                      row.names = colnames(rpkm))
xin <- SingleCellExperiment(assays = list(normcounts = rpkm, logcounts = log2(rpkm + 1)), colData = xin_ann)
rowData(xin)$feature_symbol <- rownames(xin)
saveRDS(xin, file.path(out, "lookalike_xin.rds"))
