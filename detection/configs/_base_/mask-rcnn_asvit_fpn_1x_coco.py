# Mask R-CNN FPN 1x on COCO (mmdet's Swin-T recipe: AdamW, 12 epochs) with an As-ViT backbone.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './asvit.py']

model = dict(backbone={{_base_.asvit_backbone}})
optim_wrapper = {{_base_.asvit_optim_wrapper}}
