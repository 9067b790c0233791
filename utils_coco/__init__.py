"""COCO json helpers: conversion to the authors' txt lists."""
