# NCCL for the CUDA engine's communicator (nccl_communicator.cu), optional at build time: when
# nccl.h and libnccl are found together, minitron_nccl_library() builds the communicator against
# them (MINITRON_HAVE_NCCL); otherwise make_nccl_communicator reports that the build has no NCCL
# and nothing else changes, so a machine without NCCL still builds everything.
# Where: NCCL_ROOT (cache or environment) when given, since a folder named on purpose beats one
# found by default (a tarball, or pip's nvidia-nccl-cu13 at site-packages/nvidia/nccl, whose lib/
# holds only libnccl.so.2); else the CUDA toolkit's include and library folders.
# MINITRON_NCCL=OFF leaves NCCL out even where it is found.
set(NCCL_ROOT "$ENV{NCCL_ROOT}" CACHE PATH "Folder with include/nccl.h and lib/libnccl.so* (optional)")
set(MINITRON_NCCL ON CACHE BOOL "Build the NCCL communicator when NCCL is found")

# Sets MINITRON_NCCL_FOUND, MINITRON_NCCL_INCLUDE_DIR and MINITRON_NCCL_LIBRARY in the caller.
function(minitron_find_nccl)
  set(MINITRON_NCCL_FOUND OFF PARENT_SCOPE)
  if(NOT MINITRON_NCCL)
    message(STATUS "minitron: NCCL off (MINITRON_NCCL=OFF)")
    return()
  endif()
  set(places)
  if(NCCL_ROOT)
    list(APPEND places root)
  endif()
  list(APPEND places toolkit)
  foreach(place ${places})
    if(place STREQUAL "root")
      set(include_hints ${NCCL_ROOT}/include)
      set(library_hints ${NCCL_ROOT}/lib ${NCCL_ROOT}/lib64)
    else()
      set(include_hints ${CUDAToolkit_INCLUDE_DIRS})
      set(library_hints ${CUDAToolkit_LIBRARY_DIR})
    endif()
    # Header and library from the same place, never a header of one version and a library of another.
    unset(include)
    unset(library)
    find_path(include nccl.h PATHS ${include_hints} NO_DEFAULT_PATH NO_CACHE)
    find_library(library NAMES nccl libnccl.so.2 PATHS ${library_hints} NO_DEFAULT_PATH NO_CACHE)
    if(include AND library)
      message(STATUS "minitron: NCCL ${library} (header in ${include})")
      set(MINITRON_NCCL_FOUND ON PARENT_SCOPE)
      set(MINITRON_NCCL_INCLUDE_DIR ${include} PARENT_SCOPE)
      set(MINITRON_NCCL_LIBRARY ${library} PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(STATUS "minitron: NCCL not found (NCCL_ROOT='${NCCL_ROOT}', CUDA toolkit): "
                 "the CUDA engine is built without its NCCL communicator")
endfunction()

# minitron_nccl_library(NAME CUDA_LIBRARY): the communicator and make_nccl_communicator, with the
# engine's CUDA flags (cuda_flags.cmake, included first), on top of the engine library.
function(minitron_nccl_library name cuda_library)
  set(dir ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  add_library(${name} STATIC ${dir}/nccl_communicator.cu ${dir}/make_nccl_communicator.cu)
  minitron_cuda_target_options(${name})
  target_link_libraries(${name} PUBLIC ${cuda_library})
  minitron_find_nccl()
  if(MINITRON_NCCL_FOUND)
    target_compile_definitions(${name} PRIVATE MINITRON_HAVE_NCCL=1)
    target_include_directories(${name} SYSTEM PRIVATE ${MINITRON_NCCL_INCLUDE_DIR})
    target_link_libraries(${name} PUBLIC ${MINITRON_NCCL_LIBRARY})
  endif()
endfunction()
