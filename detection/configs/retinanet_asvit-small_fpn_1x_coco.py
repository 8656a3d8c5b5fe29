_base_ = './_base_/retinanet_asvit_fpn_1x_coco.py'

# neck in_channels: the channels of asvit_small's stages 2-4 (tests/test_detection.py checks them against the registry).
model = dict(
    backbone=dict(arch='asvit_small', out_indices=(1, 2, 3), init_cfg=dict(checkpoint='asvit_small')),
    neck=dict(in_channels=[160, 320, 640]))
