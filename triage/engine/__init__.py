"""Running the model over many images: the batched predictor and Grad-CAM.

One predictor decodes with prefetch, pads full batches, classifies failures and
honours stop requests; training's feature extraction, evaluate and scan all use
it. The forward pass keeps the ``block5_conv4`` activations so that Grad-CAM
costs only the small head's gradient; heat-map overlays are written by a small
thread pool; the Ray Data engine runs the same jobs on a cluster.
"""
