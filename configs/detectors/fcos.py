# FCOS: one-stage and anchor-free (per-pixel boxes with centre-ness).
# mmdet's shipped config uses a Caffe-style ResNet-50 with its own pixel statistics; this one uses
# the PyTorch-style ResNet-18 and ImageNet statistics of the other detectors, so the comparison is
# of heads, not backbones. The rest comes from params.yaml (see faster_rcnn.py).
_base_ = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'

model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(depth=18, style='pytorch', init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
