"""The detector stage on mmdetection: configs from params, training with MLflow, test detections."""
