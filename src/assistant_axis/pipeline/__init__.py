"""The pipeline's stages as plain functions; ``workflow/scripts`` only unpack Snakemake objects and call these."""
