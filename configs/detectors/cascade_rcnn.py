# Cascade R-CNN: three R-CNN stages at rising IoU thresholds (0.5, 0.6, 0.7) for tighter boxes.
# mmdet's shipped config, with a ResNet-18 backbone; the rest comes from params.yaml
# (see faster_rcnn.py).
_base_ = 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
