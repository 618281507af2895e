"""Building blocks shared by every model: embeddings, masks, attention and feed-forward sub-layers."""
