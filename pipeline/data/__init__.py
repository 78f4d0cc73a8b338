"""Videos to clips: sources (synthetic, folder, lists, 300VW), decoding, frame/flow/depth extraction, Arrow clip files, datasets."""
