# RetinaNet FPN 1x on COCO (mmdet's Swin-T recipe, AdamW) with As-ViT. Variant configs feed stages 2-4
# to the FPN (out_indices=(1, 2, 3)), as mmdet's Swin RetinaNet does.
_base_ = ['mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py', './asvit.py']

model = dict(backbone={{_base_.asvit_backbone}})
optim_wrapper = {{_base_.asvit_optim_wrapper}}
