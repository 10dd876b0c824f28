# ATSS: one-stage, anchors assigned by adaptive IoU statistics (not in the default grid; add
# `atss: {config: configs/detectors/atss.py}` to detector.variants to train it).
# mmdet's shipped config, with a ResNet-18 backbone; the rest comes from params.yaml
# (see faster_rcnn.py).
_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
