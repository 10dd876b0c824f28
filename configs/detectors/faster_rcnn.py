# Faster R-CNN (two-stage: RPN proposals, then RoI classification and box refinement).
# mmdet's shipped config, with a ResNet-18 backbone. The stage fills in from params.yaml the
# dataset, classes, schedule, input size and head sizes (FPN width, RPN proposals, RoI sampler,
# fc width, RoIAlign implementation), and writes the resolved config next to the checkpoints.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
